"""The seed's activation loop vs collect_activations, on a GPT-2-small-shaped model (random weights).

The seed runs `run_with_cache` once per prompt (every hook of all 12 layers kept) and takes one
layer. `collect_activations` runs each batch once, hooks only the requested layers and stops after
the deepest one. Times: best of --repeats, all variants timed round-robin in one process. Memory:
each variant once more in a fresh subprocess, whose peak RSS (VmHWM, reset through
/proc/self/clear_refs just before the variant runs) minus its RSS then is the variant's peak increase.

    python benchmarks/bench_collection.py                 # seed prompts x 10, layer 6
    python benchmarks/bench_collection.py --repeats 5 --threads 2
    python benchmarks/bench_collection.py --distinct      # every prompt distinct (no de-duplication)

`--distinct` numbers each of the 50 prompts (" (1)", " (2)", ...), so no two texts are equal and
`collect_activations` cannot run a repeated text once: the batched, hook-filtered, `stop_at_layer`
pass alone against the seed loop on the same 50 texts. `--pairs none` skips the layer pairs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("SAELAB_PROGRESS", "0")

import torch  # noqa: E402

from memory import status_kb  # noqa: E402  (benchmarks/ is on sys.path)

HERE = os.path.abspath(__file__)


def gpt2_small_shaped(seed: int = 0):
    """12 layers, d_model 768, 12 heads, d_mlp 3072, with the tiny model's tokenizer (d_vocab 6144)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    from saelab.models import TINY_DIR, _quiet

    with _quiet():
        tokenizer = AutoTokenizer.from_pretrained(str(TINY_DIR))
        cfg = HookedTransformerConfig(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, n_ctx=1024,
                                      d_vocab=6144, act_fn="gelu_new", normalization_type="LN", seed=seed,
                                      tokenizer_name=str(TINY_DIR), default_prepend_bos=True, device="cpu",
                                      original_architecture="GPT2LMHeadModel")
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    return model.eval()


def seed_loop(model, prompts, layer):
    """The seed notebook's loop, verbatim (BOS rows included)."""
    activations = []
    with torch.no_grad():
        for prompt in prompts:
            tokens = model.to_tokens(prompt)
            _, cache = model.run_with_cache(tokens)
            activations.append(cache["resid_post", layer][0])
            del cache
    return torch.cat(activations, dim=0)


def prompts_for(args):
    from saelab.data import NOTEBOOK_PROMPTS, load_texts
    if args.texts == "seed":
        prompts = list(NOTEBOOK_PROMPTS) * 10
        return [f"{p} ({i + 1})" for i, p in enumerate(prompts)] if args.distinct else prompts
    return load_texts("train", max_texts=args.n_texts)


def variant_fn(name: str, model, prompts, context_length):
    """A zero-argument function running variant `name`: 'seed:L', 'collect:L,L:BS' or 'separate:L,L:BS'."""
    from saelab.activations.collect import collect_activations

    kind, *rest = name.split(":")
    if kind == "seed":
        return lambda: seed_loop(model, prompts, int(rest[0]))
    layers = [int(x) for x in rest[0].split(",")]
    batch_size = int(rest[1])
    kw = dict(batch_size=batch_size, context_length=context_length, progress=False)
    if kind == "collect":
        return lambda: collect_activations(model, prompts, layers, **kw)
    if kind == "separate":
        return lambda: [collect_activations(model, prompts, layer, **kw) for layer in layers]
    raise ValueError(f"unknown variant {name!r}")


def worker(args) -> None:
    torch.set_num_threads(args.threads)
    model = gpt2_small_shaped()
    prompts = prompts_for(args)
    run = variant_fn(args.worker, model, prompts, args.context_length)
    variant_fn(args.worker, model, prompts[:2], args.context_length)()  # warm-up
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                                       # reset VmHWM
    base = status_kb("VmRSS")
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - start)
        del out
    print(json.dumps({"seconds": min(times), "base_mb": base / 1024,
                      "peak_increase_mb": (status_kb("VmHWM") - base) / 1024}))


def measure(name: str, args) -> dict:
    cmd = [sys.executable, HERE, "--worker", name, "--repeats", "1", "--threads", str(args.threads),
           "--texts", args.texts, "--n-texts", str(args.n_texts)] + (["--distinct"] if args.distinct else [])
    if args.context_length:
        cmd += ["--context-length", str(args.context_length)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def check_same_rows(args) -> tuple[int, float]:
    """The seed loop's non-BOS rows vs collect_activations' rows: (n_rows, max abs difference)."""
    from saelab.activations.collect import collect_activations
    torch.set_num_threads(args.threads)
    model = gpt2_small_shaped()
    prompts = prompts_for(args)
    seed_rows = seed_loop(model, prompts, args.layer)
    lengths = [len(model.to_tokens(p)[0]) for p in prompts]
    keep = torch.cat([torch.arange(n) > 0 for n in lengths])
    acts = collect_activations(model, prompts, args.layer, progress=False)
    return len(acts), float((seed_rows[keep] - acts.rows).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--batch-sizes", default="1,4,8,16,32,50")
    parser.add_argument("--pairs", default="5,6;2,10", help="layer pairs for one pass vs two passes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--texts", choices=("seed", "shipped"), default="seed")
    parser.add_argument("--n-texts", type=int, default=64, help="with --texts shipped")
    parser.add_argument("--context-length", type=int, default=None)
    parser.add_argument("--distinct", action="store_true", help="number the seed prompts so that none repeats")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    n, diff = check_same_rows(args) if args.texts == "seed" else (None, None)
    what = (f"seed prompts x 10{' numbered (all distinct)' if args.distinct else ''}" if args.texts == "seed"
            else f"{args.n_texts} shipped texts")
    print(f"GPT-2-small-shaped model (random weights), {what}, layer {args.layer}, "
          f"{args.threads} threads, best of {args.repeats}\n")
    if n is not None:
        print(f"Same rows: {n} non-BOS rows, max |seed - collect| = {diff:.2e}\n")

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    pairs = [] if args.pairs == "none" else args.pairs.split(";")
    names = ([f"seed:{args.layer}"] + [f"collect:{args.layer}:{bs}" for bs in batch_sizes]
             + [f"{kind}:{pair}:16" for pair in pairs for kind in ("collect", "separate")])
    seconds = interleaved_times(names, args)
    rss = {name: measure(name, args)["peak_increase_mb"] for name in names[:1 + len(batch_sizes)]}

    seed = names[0]
    print("| variant | seconds | speedup vs seed | peak RSS increase (MB) |")
    print("|---|---:|---:|---:|")
    print(f"| seed loop (run_with_cache per prompt) | {seconds[seed]:.3f} | 1.0x | {rss[seed]:.0f} |")
    for bs in batch_sizes:
        name = f"collect:{args.layer}:{bs}"
        print(f"| collect_activations batch_size={bs} | {seconds[name]:.3f} | {seconds[seed] / seconds[name]:.1f}x "
              f"| {rss[name]:.0f} |")

    if pairs:
        print("\n| layers | one pass (s) | two single-layer passes (s) | speedup |")
        print("|---|---:|---:|---:|")
    for pair in pairs:
        one, two = seconds[f"collect:{pair}:16"], seconds[f"separate:{pair}:16"]
        print(f"| {pair} | {one:.3f} | {two:.3f} | {two / one:.2f}x |")


def interleaved_times(names, args) -> dict:
    """Best-of-`repeats` seconds of each variant, timed round-robin in one process (so a busy machine
    slows every variant alike)."""
    torch.set_num_threads(args.threads)
    model = gpt2_small_shaped()
    prompts = prompts_for(args)
    runs = {name: variant_fn(name, model, prompts, args.context_length) for name in names}
    variant_fn(names[1], model, prompts[:2], args.context_length)()  # warm-up
    best = {name: float("inf") for name in names}
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


if __name__ == "__main__":
    main()
