"""The lab's recipe with and without the dense-feature penalty, through saelab's own trainer, at matched L0.

    python benchmarks/bench_recipe.py            # tiny, layer 2, every training row, 10,000 held-out rows
    python benchmarks/bench_recipe.py --seeds 0,1

Trains `sparsity_sweep` with `TrainConfig.lab()` (two epochs, dense_l1 0.5) and with the issue-12 recipe
(one epoch, dense_l1 0) on the same rows, and prints FVU, dense and dead fractions interpolated to L0 20,
25 and 30 (`SweepResult.at_l0`). Results: benchmarks/RESULTS.md.
"""
import argparse
import time

import saelab

COEFS = (2.0, 3.0, 4.0, 6.0, 8.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    args = parser.parse_args()
    model = saelab.load_model("tiny", device="cpu")
    acts = saelab.collect_activations(model, saelab.load_texts("train"), [2], progress=False)[2]
    held_out = saelab.collect_activations(model, saelab.load_texts("test"), [2], max_tokens=10_000, progress=False)[2]
    for seed in (int(s) for s in args.seeds.split(",")):
        recipes = {"TrainConfig.lab()": saelab.TrainConfig.lab(progress=False, seed=seed),
                   "issue-12 recipe (1 epoch, dense_l1 0)": saelab.TrainConfig.lab(progress=False, seed=seed, epochs=1,
                                                                                  dense_l1=0.0)}
        for name, config in recipes.items():
            start = time.perf_counter()
            sweep = saelab.sparsity_sweep(acts, coefs=COEFS, eval_activations=held_out, config=config, n_features=512,
                                          progress=False)
            print(f"seed {seed}, {name}: {time.perf_counter() - start:.0f} s on {len(acts):,} rows")
            for l0 in (20, 25, 30):
                at = sweep.at_l0(l0)
                print(f"  L0 {l0}: FVU {at['fvu']:.4f}, dense {100 * at['dense_fraction']:.1f}%, "
                      f"dead {100 * at['dead_fraction']:.1f}%")


if __name__ == "__main__":
    main()
