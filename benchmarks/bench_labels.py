"""Label placement on the sparsity sweep's plot: saelab's greedy placer (`SweepResult.plot`) vs
adjustText, on the lab's points and on a crowded sweep (pairs of coefficients at almost the same point).

    pip install adjustText && python benchmarks/bench_labels.py      # writes benchmarks/labels/*.png

Look at the four PNGs: the result is a picture, recorded in RESULTS.md.
"""
from pathlib import Path
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from adjustText import adjust_text
from saelab.experiments.sparsity import SweepResult, _log_if_wide

OUT = Path(__file__).resolve().parent / "labels"
OUT.mkdir(exist_ok=True)
cases = {
    "lab": pd.DataFrame({"coef": [1e-3, 0.5, 1, 2, 4, 8], "l0": [120.0, 60.1, 45.2, 33.0, 24.6, 17.1],
                         "fvu": [0.012, 0.08, 0.11, 0.15, 0.19, 0.25], "ce_loss_recovered": [0.99, .97, .96, .94, .92, .88]}),
    "crowded": pd.DataFrame({"coef": [1e-3, 1e-2, 0.1, 0.5, 1, 2, 4, 8], "l0": [200, 199, 190, 60.1, 58, 33.0, 32, 17.1],
                             "fvu": [0.010, 0.0101, 0.011, 0.08, 0.082, 0.15, 0.152, 0.25],
                             "ce_loss_recovered": [0.99, 0.99, .99, .97, .97, .94, .94, .88]}),
}
for name, table in cases.items():
    table["evaluated_on"] = "held-out"
    sweep = SweepResult(table=table, saes={}, histories={}, metrics={}, evaluated_on="held-out")
    sweep.plot().savefig(OUT / f"{name}_saelab.png", dpi=90)
    # the same figure with adjustText in place of the greedy placer
    t = table.sort_values("coef")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), squeeze=False)
    for ax, column in zip(axes[0], ("fvu", "ce_loss_recovered")):
        ax.plot(t["l0"], t[column], "-", color="0.7", zorder=1)
        ax.scatter(t["l0"], t[column], c=range(len(t)), cmap="viridis", s=60, zorder=2, edgecolors="black", linewidths=0.5)
        _log_if_wide(ax.xaxis, t["l0"])
        if column == "fvu":
            _log_if_wide(ax.yaxis, t[column])
        ax.margins(0.18)
        texts = [ax.text(x, y, f"coef={c:g}", fontsize=9) for x, y, c in zip(t["l0"], t[column], t["coef"])]
        adjust_text(texts, x=list(t["l0"]), y=list(t[column]), ax=ax, arrowprops=dict(arrowstyle="-", color="0.5"))
    fig.tight_layout()
    fig.savefig(OUT / f"{name}_adjusttext.png", dpi=90)
print(f"wrote {sorted(p.name for p in OUT.glob('*.png'))}")
