"""float32 vs float64 ($SAELAB_PRECISION): what regenerating the solutions in float64 costs, and what it buys.

    python benchmarks/bench_precision.py --rows 50000 --repeats 2 --threads 2   # cost, side by side
    python benchmarks/bench_precision.py --kernels --rows 219091 --threads 1    # reproducibility across kernels

Cost: the lab's two heavy steps on tiny's layer 2, each run in float32 and in float64 in turn (the order
rotating every repeat, so a busy CPU affects both alike): collecting `--rows` training rows, and the
sparsity sweep (6 stacked SAEs of 512 features, `TrainConfig.lab()`, two epochs) on them; medians and the
ratio float64 / float32.

Reproducibility (`--kernels`): the same collection and one SAE (coefficient 4, the lab's recipe) in a fresh
process per ATEN_CPU_CAPABILITY (default, avx2, and avx512 where the CPU has it) and precision; per
precision, the largest difference of the trained weights from the "default" kernel's (relative to the
largest weight), of the features' densities on 10,000 held-out rows, and the top co-activation pair.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("SAELAB_PROGRESS", "0")

import torch  # noqa: E402

import saelab  # noqa: E402
from saelab.precision import PRECISION_ENV  # noqa: E402

LAYER, COEFS, COEF, N_FEATURES = 2, (1e-3, 0.5, 1.0, 2.0, 4.0, 8.0), 4.0, 512


def timed(precision: str, work) -> float:
    os.environ[PRECISION_ENV] = precision
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def cost(rows: int, repeats: int) -> None:
    model = saelab.load_model("tiny", device="cpu")
    texts = saelab.load_texts("train")
    acts = saelab.collect_activations(model, texts, [LAYER], max_tokens=rows, progress=False)[LAYER]
    steps = {"collection": lambda: saelab.collect_activations(model, texts, [LAYER], max_tokens=rows, progress=False),
             "sweep (6 SAEs)": lambda: saelab.sparsity_sweep(acts, coefs=COEFS, config=saelab.TrainConfig.lab(
                 progress=False), n_features=N_FEATURES, progress=False)}
    print(f"tiny layer {LAYER}, {rows:,} rows, {torch.get_num_threads()} threads, {repeats} repeats")
    print("| step | float32 s | float64 s | float64 / float32 |\n|---|---|---|---|")
    for name, work in steps.items():
        times = {"float32": [], "float64": []}
        for r in range(repeats):
            for precision in (("float32", "float64") if r % 2 == 0 else ("float64", "float32")):
                times[precision].append(timed(precision, work))
        ratios = [b / a for a, b in zip(times["float32"], times["float64"])]
        print(f"| {name} | {statistics.median(times['float32']):.1f} | {statistics.median(times['float64']):.1f} | "
              f"{statistics.median(ratios):.2f} |")


def worker(rows: int, out: str) -> None:
    """Collect, train one SAE at COEF and save what the lab shows of it (run under one kernel and precision)."""
    model = saelab.load_model("tiny", device="cpu")
    acts = saelab.collect_activations(model, saelab.load_texts("train"), [LAYER], max_tokens=rows, progress=False)[LAYER]
    held = saelab.collect_activations(model, saelab.load_texts("test"), [LAYER], max_tokens=10_000, progress=False)[LAYER]
    sae = saelab.TiedSAE(model.cfg.d_model, N_FEATURES, seed=0)
    saelab.train_sae(sae, acts, COEF, config=saelab.TrainConfig.lab(progress=False))
    pair = saelab.feature_correlation(sae, held).table.iloc[0]
    torch.save({"rows": acts.rows, "W": sae.encoder.weight.detach(), "density": saelab.evaluate(sae, held).feature_density,
                "pair": (int(pair.feature_i), int(pair.feature_j), float(pair.correlation))}, out)


def kernels(rows: int) -> None:
    caps = ["default", "avx2"] + (["avx512"] if "AVX512" in torch.backends.cpu.get_cpu_capability() else [])
    print(f"tiny layer {LAYER}, {rows:,} training rows, one SAE (coef {COEF:g}, TrainConfig.lab()), "
          f"{os.environ.get('OMP_NUM_THREADS', torch.get_num_threads())} threads; difference from the 'default' kernel")
    print("| precision | kernel | rows: max rel. diff | W: max rel. diff | densities differing | top pair (i, j, r) |")
    print("|---|---|---|---|---|---|")
    for precision in ("float32", "float64"):
        results = {}
        for cap in caps:
            out = f"/tmp/bench_precision_{os.getpid()}_{cap}_{precision}.pt"
            env = {**os.environ, "ATEN_CPU_CAPABILITY": cap, PRECISION_ENV: precision}
            subprocess.run([sys.executable, __file__, "--worker", out, "--rows", str(rows)], env=env, check=True)
            results[cap] = torch.load(out)
            os.remove(out)
        ref = results["default"]
        for cap, r in results.items():
            rel = lambda key: float((r[key] - ref[key]).abs().max() / ref[key].abs().max())
            changed = int((r["density"] != ref["density"]).sum())
            i, j, corr = r["pair"]
            print(f"| {precision} | {cap} | {rel('rows'):.1e} | {rel('W'):.1e} | {changed} of {len(r['density'])} | "
                  f"({i}, {j}, {corr:.4f}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--kernels", action="store_true", help="reproducibility across ATEN_CPU_CAPABILITY")
    parser.add_argument("--worker", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.worker:
        worker(args.rows, args.worker)
    elif args.kernels:
        kernels(args.rows)
    else:
        cost(args.rows, args.repeats)


if __name__ == "__main__":
    main()
