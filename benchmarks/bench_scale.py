"""Out-of-core at scale: collect ~1M tokens x d_model 768 to disk, train an SAE one epoch, bounded RSS.

1M rows of 768 float32 are 3.1 GB, over collect_activations' default memory budget (2 GiB), so the rows
go to a file on disk and both collection and training read them back in batches. The run happens in
a fresh subprocess; its peak RSS is measured three ways: the child's lifetime peak (ru_maxrss, read
by this parent), and per phase (VmHWM, reset through /proc/self/clear_refs before each phase).

The model has d_model 768 but, by default, a single attention-only block with one head: the rows'
width and count set the memory footprint, the block's cost only sets the run time on a 2-core CPU
(pass --n-heads 12 --d-mlp 3072 for a full GPT-2-small block). Texts: the shipped training texts,
reshuffled and repeated until there are enough tokens.

    python benchmarks/bench_scale.py --tokens 50000          # quick check
    python benchmarks/bench_scale.py                          # 1M tokens
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("SAELAB_PROGRESS", "0")

import torch  # noqa: E402

from memory import status_kb  # noqa: E402  (benchmarks/ is on sys.path)

HERE = os.path.abspath(__file__)


def build_model(args):
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    from saelab.models import TINY_DIR, _quiet

    with _quiet():
        tokenizer = AutoTokenizer.from_pretrained(str(TINY_DIR))
        cfg = HookedTransformerConfig(n_layers=args.n_layers, d_model=768, n_heads=args.n_heads, d_head=64,
                                      d_mlp=args.d_mlp or None, attn_only=not args.d_mlp, n_ctx=args.context_length,
                                      d_vocab=6144, act_fn="gelu_new", normalization_type="LN", seed=0,
                                      tokenizer_name=str(TINY_DIR), default_prepend_bos=True, device="cpu",
                                      original_architecture="GPT2LMHeadModel")
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    return model.eval()


def texts_with_tokens(model, n_tokens: int, context_length: int) -> list[str]:
    """Shipped training texts, reshuffled (seeded) and repeated until they hold >= n_tokens non-BOS rows."""
    from saelab.data import load_texts
    base = load_texts("train")
    rows = [min(len(model.to_tokens(t, truncate=False)[0]), context_length) - 1 for t in base]
    generator = torch.Generator().manual_seed(0)
    texts, total = [], 0
    while total < n_tokens:
        for i in torch.randperm(len(base), generator=generator).tolist():
            texts.append(base[i])
            total += rows[i]
            if total >= n_tokens:
                break
    return texts


class Phase:
    """Peak RSS (VmHWM) of one phase, from a reset at its start."""

    def __init__(self, name, report):
        self.name, self.report = name, report

    def __enter__(self):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self.start_mb, self.t0 = status_kb("VmRSS") / 1024, time.perf_counter()

    def __exit__(self, *exc):
        self.report[self.name] = {"seconds": time.perf_counter() - self.t0, "rss_start_mb": self.start_mb,
                                  "peak_rss_mb": status_kb("VmHWM") / 1024, "rss_end_mb": status_kb("VmRSS") / 1024}
        print(f"# {self.name}: {json.dumps(self.report[self.name])}", file=sys.stderr, flush=True)


def worker(args) -> None:
    from saelab.activations.collect import collect_activations
    torch.set_num_threads(args.threads)
    report = {}
    model = build_model(args)
    texts = texts_with_tokens(model, args.tokens, args.context_length)
    with Phase("collect", report):
        acts = collect_activations(model, texts, args.layer, batch_size=args.collect_batch_size,
                                   context_length=args.context_length, max_tokens=args.tokens,
                                   cache_dir=args.cache_dir, progress=args.progress,
                                   **({} if args.memory_budget_bytes is None else
                                      {"memory_budget_bytes": args.memory_budget_bytes}))
    report["rows"], report["on_disk"], report["d_model"] = len(acts), acts.on_disk, acts.width
    report["data_gb"] = len(acts) * acts.width * 4 / 1e9
    if not args.collect_only:
        from saelab.sae.tied import TiedSAE
        from saelab.training.trainer import train_sae
        sae = TiedSAE(acts.width, args.n_features, seed=0)
        with Phase("train", report):
            result = train_sae(sae, acts, batch_size=args.batch_size, epochs=1, device="cpu", progress=args.progress)
        report["train_tokens_per_second"] = result.tokens_per_second
        report["train_seconds_in_loop"] = result.seconds
        report["final_recon"] = float(result.history["recon"].iloc[-1])
    print(json.dumps(report))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--layer", type=int, default=0)
    parser.add_argument("--n-layers", type=int, default=1)
    parser.add_argument("--n-heads", type=int, default=1)
    parser.add_argument("--d-mlp", type=int, default=0, help="0: attention-only block")
    parser.add_argument("--context-length", type=int, default=256)
    parser.add_argument("--collect-batch-size", type=int, default=16)
    parser.add_argument("--n-features", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4096, help="SAE training batch size")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--memory-budget-bytes", type=int, default=None, help="default: the library's (2 GiB)")
    parser.add_argument("--collect-only", action="store_true")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    cmd = [sys.executable, HERE, "--worker"] + sys.argv[1:]
    start = time.perf_counter()
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    wall = time.perf_counter() - start
    report = json.loads(out.strip().splitlines()[-1])
    child_peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    print(f"{report['rows']:,} rows x d_model {report['d_model']} = {report['data_gb']:.2f} GB of float32, "
          f"on disk: {report['on_disk']}; model: {args.n_layers} layer(s), "
          f"{'attention-only' if not args.d_mlp else f'd_mlp {args.d_mlp}'}, {args.n_heads} head(s); "
          f"SAE {report['d_model']} -> {args.n_features}, batch {args.batch_size}; {args.threads} threads\n")
    print("| phase | seconds | RSS at start (MB) | peak RSS (MB) | RSS at end (MB) |")
    print("|---|---:|---:|---:|---:|")
    for name in ("collect", "train"):
        if name in report:
            r = report[name]
            print(f"| {name} | {r['seconds']:.0f} | {r['rss_start_mb']:.0f} | {r['peak_rss_mb']:.0f} | {r['rss_end_mb']:.0f} |")
    print(f"\nWhole subprocess: peak RSS (ru_maxrss) {child_peak_mb:.0f} MB, wall {wall:.0f} s; "
          f"collection {report['rows'] / report['collect']['seconds']:,.0f} tokens/s"
          + (f"; training {report['train_tokens_per_second']:,.0f} tokens/s, final recon {report['final_recon']:.4g}"
             if "train" in report else " (training not run)"))


if __name__ == "__main__":
    main()
