"""The lab's tied SAE beside its untied twin at matched L0 (issue 22, item 3; the lab's optional section).

    python benchmarks/bench_untied.py                        # tiny, layer 2, every training row, seeds 0 and 1
    python benchmarks/bench_untied.py --seeds 0 --coefs 2 --timing   # the lab's cell, beside one tied training

For each seed: `sparsity_sweep` with `TrainConfig.lab(seed=seed)` at the coefficients (the lab's SAEs), then
`saelab.untied_twin` for each SAE (SAELens's standard SAE, same start, rows, batches, steps and recipe,
unit-norm decoder rows, coefficient steered to the tied SAE's L0), both measured on 10,000 held-out rows.
Timing: the twin's whole call; with --timing, beside `train_sae` of one tied SAE with the same recipe in
the same run (a ratio: the machine is shared). Results: benchmarks/RESULTS.md.
"""
import argparse
import time

import torch

import saelab
from saelab.metrics import DENSE_THRESHOLD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--coefs", default="2,4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timing", action="store_true", help="also time train_sae of one tied SAE beside the twin")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    coefs = [float(c) for c in args.coefs.split(",")]
    model = saelab.load_model("tiny", device="cpu")
    acts = saelab.collect_activations(model, saelab.load_texts("train"), [2], progress=False)[2]
    held_out = saelab.collect_activations(model, saelab.load_texts("test"), [2], max_tokens=10_000, progress=False)[2]
    print(f"tiny layer 2: {len(acts):,} training rows, {len(held_out):,} held-out rows, {args.threads} threads")
    print("| seed | coef | L0 tied / untied | FVU tied / untied | dense tied / untied (features) | dead untied "
          "| enc-dec cosine | twin's final coef | twin call (s) | one tied train_sae (s) |")
    for seed in (int(s) for s in args.seeds.split(",")):
        config = saelab.TrainConfig.lab(progress=False, seed=seed)
        sweep = saelab.sparsity_sweep(acts, coefs=coefs, config=config, n_features=512, progress=False)
        for coef in coefs:
            start = time.perf_counter()
            tie = saelab.untied_twin(sweep.saes[coef], acts, held_out, config=config)
            twin_s = time.perf_counter() - start
            tied_s = float("nan")
            if args.timing:
                start = time.perf_counter()
                saelab.train_sae(saelab.TiedSAE(128, 512, seed=seed), acts, coef, config=config)
                tied_s = time.perf_counter() - start
            t, u = tie.tied_metrics, tie.untied_metrics
            n_dense = [int((m.feature_density > DENSE_THRESHOLD).sum()) for m in (t, u)]
            row = tie.table.set_index("sae").loc["untied twin"]
            print(f"| {seed} | {coef:g} | {t.l0:.2f} / {u.l0:.2f} ({100 * (u.l0 / t.l0 - 1):+.1f}%) | {t.fvu:.4f} / "
                  f"{u.fvu:.4f} | {100 * t.dense_fraction:.2f}% / {100 * u.dense_fraction:.2f}% ({n_dense[0]} / "
                  f"{n_dense[1]}) | {100 * u.dead_fraction:.1f}% | {row['enc_dec_cosine']:.3f} | {row['coef']:.2f} "
                  f"| {twin_s:.1f} | {tied_s:.1f} |", flush=True)


if __name__ == "__main__":
    main()
