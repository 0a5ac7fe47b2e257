"""The feature browser on tiny (issue 20, item 3): what the lab's Part 6b cell costs and how fast a click is.

    python benchmarks/bench_browser.py [--threads 2] [--repeats 2]

Uses the shipped reference SAE (`tiny_layer2_standard`) and the lab's held-out rows on tiny (10,000), and
times, side by side in one process: the Part 6 cell's three feature cards (the baseline), `saelab.browse`
(the overview: one pass over the rows), the first display (static card, ablation and steering, plus the live
view: plotly's import and the FigureWidget), a click on a new feature (card, ablation and steering through
the live view), a click back on a feature already seen (the cache), and the steering slider. `--repeats`
runs the whole sequence again in a fresh browser (plotly's import is paid once).
"""
import argparse
import time

import torch

import saelab
from saelab.training.lab_settings import lab_settings

parser = argparse.ArgumentParser()
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--repeats", type=int, default=2)
args = parser.parse_args()
torch.set_num_threads(args.threads)

model = saelab.load_model("tiny", device="cpu")
sae = saelab.load_sae("tiny_layer2_standard")
held = saelab.collect_activations(model, saelab.load_texts("test"), [sae.layer], max_tokens=lab_settings("tiny").eval_tokens,
                                  progress=False)[sae.layer]


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


for repeat in range(args.repeats):
    rows = {}
    density = saelab.evaluate(sae, held).feature_density
    typical = torch.nonzero((density > 0.002) & (density < 0.1)).flatten()
    picks = typical[density[typical].argsort(descending=True)]
    picks = [int(picks[n]) for n in (0, len(picks) // 2, len(picks) - 1)]
    rows["Part 6 cell: three feature cards (baseline)"] = timed(
        lambda: [saelab.feature_card(model, sae, held, f)._repr_html_() for f in picks])
    box = {}
    rows["browse(): the overview and the rule's first feature"] = timed(
        lambda: box.setdefault("b", saelab.browse(model, sae, held, n_texts=2)))
    browser = box["b"]
    rows["first display: static form + live view (Part 6b cell = browse + this)"] = timed(browser._repr_mimebundle_)
    clicks = [f for f in browser.search("e", limit=40) if f != browser.feature][:3]
    per_click = [timed(lambda f=f: browser.select(f)) for f in clicks]
    rows[f"a click on a new feature (mean of {len(clicks)})"] = sum(per_click) / len(per_click)
    rows["a click back on a feature already seen"] = timed(lambda: browser.select(clicks[0]))
    rows["the steering slider, one step"] = timed(lambda: browser.view.steer(2.5))
    base = rows["Part 6 cell: three feature cards (baseline)"]
    print(f"\nrepeat {repeat + 1} ({len(held):,} held-out rows, {sae.d_sae} features, {args.threads} threads)")
    print("| step | seconds | x the Part 6 cell |\n|---|---:|---:|")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds:.3f} | {seconds / base:.2f} |")
