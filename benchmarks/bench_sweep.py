"""The stacked sparsity sweep vs N sequential `train_sae` runs (the seed's loop over coefficients).

Both sides train the seed's three coefficients from the same init (`TiedSAE(d, 4d, seed=0)`) on the
same batches (`batch_indices`) and end with the same evaluation on the training rows, so the weights
must agree to float precision and only the time differs. The two variants alternate which runs first
every repeat (so a busy machine slows both alike); the table shows the median over repeats.

    python benchmarks/bench_sweep.py                           # tiny-model rows (d 128) and random d 768
    python benchmarks/bench_sweep.py --steps 300 --repeats 5 --threads 2
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("SAELAB_PROGRESS", "0")

import torch  # noqa: E402

COEFS = (1e-2, 1e-3, 1e-4)


def tiny_rows(n_rows: int):
    """Layer-2 resid_post rows of the embedded model on the shipped training texts."""
    import saelab
    from saelab.activations.collect import collect_activations

    model = saelab.load_model("tiny", device="cpu")
    texts = saelab.load_texts("train")
    return collect_activations(model, texts, 2, max_tokens=n_rows, progress=False)


def random_rows(n_rows: int, d_model: int):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n_rows, d_model, generator=g) * torch.linspace(0.5, 3.0, d_model) + 1.0


def sequential(rows, d_model: int, steps: int):
    from saelab.sae.tied import TiedSAE
    from saelab.training.trainer import train_sae

    start = time.perf_counter()
    runs = [train_sae(TiedSAE(d_model, 4 * d_model, seed=0), rows, sparsity_coef=c, steps=steps, seed=0,
                      progress=False) for c in COEFS]
    total = time.perf_counter() - start
    return total, sum(r.seconds for r in runs), {c: r.sae for c, r in zip(COEFS, runs)}


def stacked(rows, steps: int):
    from saelab.experiments import sparsity_sweep

    start = time.perf_counter()
    sweep = sparsity_sweep(rows, coefs=COEFS, steps=steps, seed=0, progress=False)
    return time.perf_counter() - start, sweep.seconds, sweep.saes


def max_weight_difference(a: dict, b: dict) -> float:
    return max((x - y).abs().max().item() for c in COEFS
               for x, y in zip(a[c].state_dict().values(), b[c].state_dict().values()))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-models", default="128,768", help="comma-separated; 128 uses the tiny model's rows")
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=200, help="training steps per SAE")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.steps} steps of 64, coefs {COEFS}, "
          f"{args.repeats} repeats (median)\n")
    print("| data | d_model | n_features | sequential train_sae x3 (s) | stacked sweep (s) | speed-up "
          "| loops only: seq / stacked (s) | loop speed-up | max abs weight diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d_model in (int(d) for d in args.d_models.split(",")):
        rows, what = (tiny_rows(args.rows), "tiny layer 2") if d_model == 128 else \
            (random_rows(args.rows, d_model), "random")
        sequential(rows, d_model, 2), stacked(rows, 2)  # warm-up
        seq_total, seq_loop, st_total, st_loop, diff = [], [], [], [], 0.0
        for rep in range(args.repeats):
            for variant in (("sequential", "stacked") if rep % 2 == 0 else ("stacked", "sequential")):
                if variant == "sequential":  # the order alternates every repeat
                    t, loop, seq_saes = sequential(rows, d_model, args.steps)
                    seq_total.append(t), seq_loop.append(loop)
                else:
                    t, loop, st_saes = stacked(rows, args.steps)
                    st_total.append(t), st_loop.append(loop)
            diff = max(diff, max_weight_difference(seq_saes, st_saes))
        a, b = statistics.median(seq_total), statistics.median(st_total)
        la, lb = statistics.median(seq_loop), statistics.median(st_loop)
        print(f"| {what} ({args.rows} rows) | {d_model} | {4 * d_model} | {a:.2f} | {b:.2f} | {a / b:.2f}x "
              f"| {la:.2f} / {lb:.2f} | {la / lb:.2f}x | {diff:.2g} |", flush=True)


if __name__ == "__main__":
    main()
