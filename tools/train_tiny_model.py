"""Train saelab's embedded "tiny" model: a 4-layer GPT-2-architecture HookedTransformer.

Reproduce (about 40 minutes on 2 CPU cores; resumable, run it again to continue):
    apt-get download python3.11-doc libpython3.11-stdlib jargon-text   # into DIR
    python tools/build_corpus.py --debs DIR --out build/corpus
    python tools/train_tiny_model.py --corpus build/corpus --work build/tiny

Stages: (1) a byte-level BPE tokenizer on the training split, (2) the model, trained on packed
sequences that start with the end-of-text/BOS token, checkpointed to WORK every --ckpt-every steps
(safetensors), (3) export: LayerNorm folded and writing weights centred as TransformerLens does for
GPT-2, weights in fp16, tokenizer and model card into saelab/assets/tiny/.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ASSETS = Path(__file__).resolve().parents[1] / "saelab" / "assets" / "tiny"
EOT = "<|endoftext|>"
CONFIG = dict(n_layers=4, d_model=128, n_heads=4, d_head=32, d_mlp=512, n_ctx=256, d_vocab=6144,
              act_fn="gelu_new", normalization_type="LN", positional_embedding_type="standard")


def read_docs(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open(encoding="utf-8")]


def train_tokenizer(corpus: Path, out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=CONFIG["d_vocab"], special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = [d["text"] for d in read_docs(corpus / "train.jsonl")]
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT,
                                   model_max_length=CONFIG["n_ctx"])
    fast.save_pretrained(str(out))


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(path.resolve()))


def token_stream(docs: list[dict], tokenizer) -> torch.Tensor:
    """All documents tokenized and joined, each followed by the end-of-text token. [n_tokens]"""
    eot = tokenizer.convert_tokens_to_ids(EOT)
    ids: list[int] = []
    for d in docs:
        ids.extend(tokenizer(d["text"], add_special_tokens=False)["input_ids"])
        ids.append(eot)
    return torch.tensor(ids, dtype=torch.int64)


def batches(stream: torch.Tensor, seq_len: int, batch_size: int, step: int, seed: int, bos: int) -> torch.Tensor:
    """The batch for `step`: rows of BOS + (seq_len - 1) packed tokens, order set by (seed, epoch)."""
    body = seq_len - 1
    n_rows = len(stream) // body
    per_epoch = n_rows // batch_size
    epoch, k = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    rows = torch.randperm(n_rows, generator=g)[k * batch_size:(k + 1) * batch_size]
    x = stream[: n_rows * body].view(n_rows, body)[rows]
    return torch.cat([torch.full((batch_size, 1), bos), x], dim=1)


def make_model(tokenizer_dir: Path):
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    cfg = HookedTransformerConfig(**CONFIG, tokenizer_name=str(tokenizer_dir.resolve()), seed=0,
                                  default_prepend_bos=True, original_architecture="GPT2LMHeadModel")
    return HookedTransformer(cfg)


def flatten_optimizer(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for idx, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            out[f"opt.{idx}.{key}"] = torch.as_tensor(value).clone()
    return out


def restore_optimizer(opt: torch.optim.Optimizer, flat: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for name, value in flat.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    sd["state"] = state
    opt.load_state_dict(sd)


def lr_at(step: int, steps: int, lr: float, warmup: int = 100) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def mean_loss(model, stream: torch.Tensor, seq_len: int, bos: int, max_rows: int = 256) -> float:
    body = seq_len - 1
    n_rows = min(max_rows, len(stream) // body)
    x = stream[: n_rows * body].view(n_rows, body)
    x = torch.cat([torch.full((n_rows, 1), bos), x], dim=1)
    losses = [model(x[i:i + 32], return_type="loss").item() for i in range(0, n_rows, 32)]
    return sum(losses) / len(losses)


def unigram_loss(train: torch.Tensor, test: torch.Tensor, vocab: int) -> float:
    counts = torch.bincount(train, minlength=vocab).double() + 1
    logp = (counts / counts.sum()).log()
    return float(-logp[test].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=Path("build/corpus"))
    ap.add_argument("--work", type=Path, default=Path("build/tiny"))
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--export-only", action="store_true", help="export the latest checkpoint and stop")
    args = ap.parse_args()
    torch.set_num_threads(2)
    args.work.mkdir(parents=True, exist_ok=True)
    tok_dir = args.work / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        t0 = time.time()
        train_tokenizer(args.corpus, tok_dir)
        print(f"tokenizer trained in {time.time() - t0:.0f}s", flush=True)
    tokenizer = load_tokenizer(tok_dir)
    bos = tokenizer.convert_tokens_to_ids(EOT)
    streams = {}
    for split in ("train", "test"):
        cache = args.work / f"{split}_tokens.safetensors"
        if not cache.exists():
            save_file({"ids": token_stream(read_docs(args.corpus / f"{split}.jsonl"), tokenizer)}, str(cache))
        streams[split] = load_file(str(cache))["ids"]
    print(f"tokens: train {len(streams['train']):,}, test {len(streams['test']):,}", flush=True)

    torch.manual_seed(args.seed)
    model = make_model(tok_dir)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    ckpt, meta_path = args.work / "ckpt.safetensors", args.work / "ckpt.json"
    meta = {"step": 0, "train_seconds": 0.0, "log": []}
    if ckpt.exists():
        flat = load_file(str(ckpt))
        model.load_state_dict({k[6:]: v for k, v in flat.items() if k.startswith("model.")})
        restore_optimizer(opt, {k: v for k, v in flat.items() if k.startswith("opt.")})
        meta = json.loads(meta_path.read_text())
        print(f"resumed at step {meta['step']}", flush=True)

    t_last = time.time()
    while meta["step"] < args.steps and not args.export_only:
        step = meta["step"]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr)
        x = batches(streams["train"], args.seq_len, args.batch_size, step, args.seed, bos)
        loss = model(x, return_type="loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        meta["step"] = step + 1
        if meta["step"] % 20 == 0:
            meta["log"].append([meta["step"], round(loss.item(), 4)])
        if meta["step"] % args.ckpt_every == 0 or meta["step"] == args.steps:
            now = time.time()
            meta["train_seconds"] += now - t_last
            t_last = now
            flat = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
            flat.update(flatten_optimizer(opt))
            save_file(flat, str(ckpt))
            meta_path.write_text(json.dumps(meta))
            tps = args.ckpt_every * args.batch_size * args.seq_len / max(1e-9, meta["train_seconds"] / max(1, meta["step"] / args.ckpt_every))
            print(f"step {meta['step']}/{args.steps} loss {loss.item():.3f} ~{tps:,.0f} tok/s "
                  f"elapsed {meta['train_seconds'] / 60:.1f} min", flush=True)
    export(model, tokenizer, tok_dir, streams, args, meta, bos)


def export(model, tokenizer, tok_dir: Path, streams, args, meta, bos: int) -> None:
    """Fold LN / centre weights as TransformerLens does for GPT-2, write fp16 weights + card."""
    import shutil
    model.eval()
    train_loss = mean_loss(model, streams["train"], args.seq_len, bos)
    test_loss = mean_loss(model, streams["test"], args.seq_len, bos)
    model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    folded_test = mean_loss(model, streams["test"], args.seq_len, bos)
    assert abs(folded_test - test_loss) < 1e-3, (folded_test, test_loss)
    ASSETS.mkdir(parents=True, exist_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tok_dir / f).exists():
            shutil.copy(tok_dir / f, ASSETS / f)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()
             if not k.endswith((".IGNORE", ".mask"))}
    save_file(state, str(ASSETS / "model.safetensors"))
    config = {**CONFIG, "normalization_type": model.cfg.normalization_type, "seed": 0}
    n_params = sum(p.numel() for p in model.parameters())
    uni = unigram_loss(streams["train"], streams["test"], CONFIG["d_vocab"])
    card = {"config": config, "n_params": n_params, "steps": meta["step"], "batch_size": args.batch_size,
            "seq_len": args.seq_len, "lr": args.lr, "seed": args.seed,
            "tokens_seen": meta["step"] * args.batch_size * args.seq_len,
            "train_minutes": round(meta["train_seconds"] / 60, 1),
            "train_loss": round(train_loss, 4), "heldout_loss": round(test_loss, 4),
            "unigram_heldout_loss": round(uni, 4), "loss_log": meta["log"]}
    (ASSETS / "config.json").write_text(json.dumps(card, indent=1))
    card.update(shipped_text_losses(streams["train"]))
    (ASSETS / "config.json").write_text(json.dumps(card, indent=1))
    (ASSETS / "MODEL_CARD.md").write_text(model_card(card, (ASSETS / "model.safetensors").stat().st_size))
    print(json.dumps({k: v for k, v in card.items() if k != "loss_log"}, indent=1))


def shipped_text_losses(train_stream: torch.Tensor, n_texts: int = 32) -> dict:
    """Loss of the exported (fp16) model on the first shipped held-out texts, and the unigram baseline."""
    from saelab.data import load_texts
    from saelab.models import load_model, text_loss, tiny_card
    tiny_card.cache_clear()
    model = load_model("tiny", device="cpu")
    texts = load_texts("test", max_texts=n_texts)
    counts = torch.bincount(train_stream, minlength=CONFIG["d_vocab"]).double() + 1
    logp = (counts / counts.sum()).log()
    ids = torch.cat([model.to_tokens(t, prepend_bos=True)[0, 1:128] for t in texts])
    return {"shipped_test_texts": n_texts, "shipped_test_loss": round(text_loss(model, texts), 4),
            "shipped_test_unigram_loss": round(float(-logp[ids].mean()), 4)}


def model_card(card: dict, weights_bytes: int) -> str:
    c = card["config"]
    return f"""# saelab "tiny": the embedded model

A small GPT-2-architecture language model, trained for saelab so that Lab C.4 runs offline.
GPT-2 small remains the lab's real target (`load_model("gpt2-small")` with internet access).

## Architecture
TransformerLens `HookedTransformer`: {c['n_layers']} layers, d_model {c['d_model']}, {c['n_heads']} heads
of {c['d_head']}, d_mlp {c['d_mlp']} (`{c['act_fn']}`), learned positional embeddings, context {c['n_ctx']}
tokens, vocabulary {c['d_vocab']} (byte-level BPE trained on the same corpus; `<|endoftext|>` is BOS,
EOS and padding). {card['n_params']:,} parameters. LayerNorm weights are folded and writing weights
centred as TransformerLens does for GPT-2 (`normalization_type="{c['normalization_type']}"`).
Weights: `model.safetensors`, fp16, {weights_bytes / 2**20:.1f} MiB.

## Training
{card['steps']:,} steps of AdamW (lr {card['lr']}, cosine to 10%, warm-up 100, weight decay 0.01,
gradient clip 1.0), batch {card['batch_size']} x {card['seq_len']} tokens (packed documents, each row
starting with BOS): {card['tokens_seen']:,} tokens in {card['train_minutes']} minutes of wall-clock time on a
shared 2-core CPU machine (about 2 minutes per 100 steps when the machine is otherwise idle). Seed {card['seed']}.

| split | loss (nats/token) |
| --- | --- |
| train (first 256 rows) | {card['train_loss']} |
| held-out documents | {card['heldout_loss']} |
| unigram baseline, held-out | {card['unigram_heldout_loss']} |
| first {card['shipped_test_texts']} shipped test texts (`saelab.models.text_loss`) | {card['shipped_test_loss']} |
| unigram baseline on those texts | {card['shipped_test_unigram_loss']} |

## Data
About 13 M characters, split by document (1 in 20 held out by hash of the document id):
- Python 3.11 documentation, reST sources (Debian package `python3.11-doc`): Copyright Python
  Software Foundation, PSF License Agreement.
- Python 3.11 standard-library source code, tests excluded (Debian package `libpython3.11-stdlib`):
  Copyright Python Software Foundation, PSF License Agreement.
- The Jargon File 4.4.7 by Eric S. Raymond et al. (Debian package `jargon-text`): public domain.

saelab's shipped texts (`saelab.load_texts`) are a sample of the same documents; "test" texts come
only from the held-out documents.

## Reproduce
```
apt-get download python3.11-doc libpython3.11-stdlib jargon-text   # into DIR
python tools/build_corpus.py --debs DIR --out build/corpus
python tools/train_tiny_model.py --corpus build/corpus --work build/tiny --steps {card['steps']}
```
Training resumes from `build/tiny/ckpt.safetensors` when interrupted.
"""


if __name__ == "__main__":
    main()
