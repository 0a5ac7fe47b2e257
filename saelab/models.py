"""load_model: the embedded "tiny" model offline, or any TransformerLens model name online."""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from functools import lru_cache

import torch

from saelab.utils import ASSETS_DIR, progress_enabled

TINY_DIR = ASSETS_DIR / "tiny"
TINY_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
DEFAULT_MODEL_ENV = "SAELAB_MODEL"
EXAMPLE_ONLINE_MODELS = ("gpt2-small", "gpt2-medium", "pythia-70m")


def default_model_name() -> str:
    """The model name notebooks and the CLI use: $SAELAB_MODEL, else "tiny"."""
    return os.environ.get(DEFAULT_MODEL_ENV, "").strip() or "tiny"


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`None` picks cuda, then mps, then cpu; anything else must exist on this machine."""
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device: expected 'cpu', 'cuda', 'cuda:N', 'mps' or None, got {device!r}") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} was asked for, but CUDA is not available here; use 'cpu' or None")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device: {device!r} does not exist; this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device: {device!r} was asked for, but MPS is not available here; use 'cpu' or None")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device: expected 'cpu', 'cuda', 'cuda:N', 'mps' or None, got {device!r}")
    return dev


def supports_float64(device: str | torch.device) -> bool:
    """Whether tensors of dtype float64 can live on `device` (not on Apple's MPS)."""
    return torch.device(device).type != "mps"


def accumulation(device: str | torch.device) -> tuple[torch.dtype, torch.device]:
    """(dtype of a batch's reductions on `device`, device of the float64 running sums).

    float64 on the device itself where it has float64 (CPU, CUDA); on MPS, a batch is reduced in
    float32 there and its partial sum added to float64 totals on the CPU:

        dtype, home = accumulation(x.device)
        total = torch.zeros((), dtype=torch.float64, device=home)
        total += x.pow(2).sum(dtype=dtype).to(home, torch.float64)
    """
    device = torch.device(device)
    if supports_float64(device):
        return torch.float64, device
    return torch.float32, torch.device("cpu")


@contextlib.contextmanager
def _quiet():
    """Silence TransformerLens' construction-time warnings and logging chatter, and transformers'
    weight-loading bar when progress bars are off ($SAELAB_PROGRESS=0)."""
    import logging

    from transformers.utils import logging as hf_logging

    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    bars = hf_logging.is_progress_bar_enabled()
    if not progress_enabled():
        hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        logging.getLogger().setLevel(level)
        if bars:
            hf_logging.enable_progress_bar()


@lru_cache(maxsize=1)
def tiny_card() -> dict:
    """The embedded model's card: config, training settings and losses (assets/tiny/config.json)."""
    _check_tiny_files()
    path = TINY_DIR / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RuntimeError(f"saelab package data is corrupt: {path} is not valid JSON ({e}); reinstall saelab") from e


def _check_tiny_files() -> None:
    missing = [f for f in TINY_FILES if not (TINY_DIR / f).is_file()]
    if missing:
        raise FileNotFoundError(f"saelab package data is missing: {', '.join(str(TINY_DIR / f) for f in missing)}; "
                                "reinstall saelab")


def _load_tiny(device: torch.device):
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    card = tiny_card()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(TINY_DIR))
    except Exception as e:  # tokenizers raises its own exception types
        raise RuntimeError(f"saelab package data is corrupt: the tokenizer in {TINY_DIR} did not load ({e})") from e
    cfg = HookedTransformerConfig(**card["config"], model_name="tiny", tokenizer_name=str(TINY_DIR), default_prepend_bos=True,
                                  original_architecture="GPT2LMHeadModel", device=str(device))
    weights = TINY_DIR / "model.safetensors"
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise RuntimeError(f"saelab package data is corrupt: {weights} did not load ({e})") from e
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    missing = [k for k in missing if not k.endswith((".IGNORE", ".mask"))]
    if missing or unexpected:
        raise RuntimeError(f"saelab package data is corrupt: {weights} does not match the tiny config "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device, print_details=False)


def load_model(name: str | None = None, device: str | torch.device | None = None):
    """Load a HookedTransformer in eval mode.

    name: "tiny" (default, or $SAELAB_MODEL): the embedded 4-layer GPT-2-architecture model, offline.
          Any other name goes to `HookedTransformer.from_pretrained` (e.g. "gpt2-small"), which
          needs internet access or a filled Hugging Face cache; without either it raises
          ModelUnavailableError at once.
    device: None picks cuda, then mps, then cpu.
    """
    name = default_model_name() if name is None else name
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name: expected a model name such as 'tiny' or 'gpt2-small', got {name!r}")
    dev = resolve_device(device)
    with _quiet():
        if name == "tiny":
            model = _load_tiny(dev)
        else:
            model = _load_pretrained(name, dev)
    model.eval()
    return model


class ModelUnavailableError(RuntimeError):
    """A pretrained model that is neither in the local Hugging Face cache nor downloadable now.

    `model_name` is the name asked for; `offline_choice` ("tiny") the embedded model that always
    loads, for callers (the CLI) that phrase the alternative in their own terms (`--model tiny`).
    """

    offline_choice = "tiny"

    def __init__(self, model_name: str, reason: str):
        self.model_name, self.reason = model_name, reason
        super().__init__(f"could not load {model_name!r}: {reason}. The embedded model "
                         f"{self.offline_choice!r} works offline; or connect to the internet once so that "
                         f"{model_name!r} is downloaded into the Hugging Face cache.")


HUB_PROBE_TIMEOUT_S = 3.0


def hub_reachable(url: str | None = None, timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the Hugging Face Hub answers one HTTP request within `timeout` seconds.

    False at once, with no request, when offline mode is on ($HF_HUB_OFFLINE=1). url: default
    $HF_ENDPOINT (huggingface.co); any HTTP status counts as reachable; the session (and so
    proxies) is huggingface_hub's own.
    """
    from huggingface_hub import constants, get_session

    if constants.is_offline_mode():
        return False
    try:
        get_session().head(url or constants.ENDPOINT, timeout=timeout)
    except Exception:  # httpx's connect/timeout errors, OfflineModeIsEnabled, ...: all mean "not now"
        return False
    return True


def in_hf_cache(repo_id: str) -> bool:
    """Whether `repo_id`'s config.json is in the local Hugging Face cache ($HF_HOME/hub)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """Hugging Face offline mode for the block when `offline` (no retries against an unreachable Hub)."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _load_pretrained(name: str, device: torch.device):
    """`HookedTransformer.from_pretrained(name)`; offline from the cache when the Hub is unreachable.

    A model neither cached nor reachable raises ModelUnavailableError at once (one short probe,
    none at all with $HF_HUB_OFFLINE=1) instead of after Hugging Face's network retries.
    """
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES, get_official_model_name

    try:
        repo_id = get_official_model_name(name)
    except ValueError:
        raise ValueError(f"name: unknown model {name!r}; choose 'tiny' (embedded, offline) or a "
                         f"TransformerLens model such as {', '.join(EXAMPLE_ONLINE_MODELS)} "
                         f"({len(OFFICIAL_MODEL_NAMES)} known)") from None
    cached = in_hf_cache(repo_id)
    online = hub_reachable()
    if not cached and not online:
        raise ModelUnavailableError(name, "it is not in the local Hugging Face cache and the Hugging Face Hub "
                                          "cannot be reached (offline)")
    try:
        with _hub_offline(not online):
            return HookedTransformer.from_pretrained(name, device=str(device))
    except (OSError, ConnectionError) as e:
        raise ModelUnavailableError(name, f"its files could not be read from the cache or downloaded "
                                          f"({type(e).__name__})") from None


@torch.no_grad()
def text_loss(model, texts: list[str], context_length: int = 128) -> float:
    """Mean next-token loss (nats) of `model` over `texts`, each run alone from BOS, truncated.

    The embedded model's card reports this on the first 32 held-out shipped texts
    (`load_texts("test")`), next to the unigram baseline, so a test can check the weights.
    """
    if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise ValueError(f"texts: expected a non-empty list of non-empty strings, got {type(texts).__name__}")
    losses = []
    for text in texts:
        tokens = model.to_tokens(text, prepend_bos=True)[:, :context_length]
        if tokens.shape[1] < 2:
            continue
        losses.append(model(tokens, return_type="loss").item())
    if not losses:
        raise ValueError("texts: every text is shorter than two tokens; nothing to predict")
    return sum(losses) / len(losses)
