"""Exercise 3 of the lab (the original notebook's first), the sparsity sweep: one tied SAE per sparsity
coefficient, all trained at once.

The coefficients' SAEs train together in the one trainer core (`saelab.training.trainer.train_stacked`: a
stacked model on the same mini-batches that `train_sae` would use), so the results equal N separate
`train_sae` runs, bit for bit, in a fraction of the time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from saelab.activations.collect import probe_width
from saelab.activations.rows import Activations
from saelab.metrics import ce_loss_recovered_many, evaluate_unchecked
from saelab.experiments.runs import NOTEBOOK_FEATURES_PER_DIM, NOTEBOOK_LOOP, TrainedSAEs
from saelab.results import fmt
from saelab.sae.tied import TiedSAE
from saelab.training.trainer import train_stacked
from saelab.training.config import TrainConfig, experiment_config
from saelab.utils import progress_bar
from saelab.validate import (check_coefs, check_float, check_hook, check_int, check_layer, check_model, check_rows,
                             check_texts, row_width)

#: The original notebook's sweep coefficients.
NOTEBOOK_COEFS = (1e-2, 1e-3, 1e-4)


@dataclass(repr=False, kw_only=True)
class SweepResult(TrainedSAEs):
    """What `sparsity_sweep` returns: `TrainedSAEs` keyed by coefficient, and

    table: one row per coefficient: coef, mse, explained_variance, fvu, l0, l1, dead_fraction,
        dense_fraction (and ce_loss_recovered, ce_loss_spliced, ce_loss_clean when a model and texts
        were given), evaluated_on ("held-out" or "training data"), n_tokens.
    """
    table: pd.DataFrame

    def summary(self) -> str:
        s = self.settings
        where = f"layer {s['layer']} of {s['model_name']}, " if s.get("layer") is not None else ""
        t = self.table.sort_values("coef")
        trend = (f"; L0 {fmt(t['l0'].iloc[-1])} at coef {t['coef'].iloc[-1]:g} vs {fmt(t['l0'].iloc[0])} at "
                 f"{t['coef'].iloc[0]:g}" if len(t) > 1 else "")
        stop = " INTERRUPTED" if self.interrupted else ""
        return (f"Sparsity sweep: {len(self.table)} SAEs ({where}{s.get('n_features')} features, "
                f"{s.get('steps')} steps{stop} of {s.get('batch_size')} on {s.get('n_train_tokens'):,} tokens, "
                f"{self.seconds:.1f}s), evaluated on {self.evaluated_on} ({int(self.table['n_tokens'].iloc[0]):,} "
                f"tokens){trend}")

    def at_l0(self, l0: float) -> dict:
        """The sweep's metrics at L0 = `l0`, interpolated between the two coefficients whose L0 bracket it
        (linearly in log L0): {"l0", "coef", "fvu", "dense_fraction", "dead_fraction" (and
        "ce_loss_recovered" when measured)}; NaN for each when no two SAEs of the sweep bracket `l0`
        (a sweep's coefficients must reach to both sides of it)."""
        target = check_float("l0", l0, minimum=0.0, strict=True)
        t = self.table[self.table["l0"] > 0].sort_values("l0")
        columns = [c for c in ("coef", "fvu", "dense_fraction", "dead_fraction", "ce_loss_recovered") if c in t]
        for (_, lo), (_, hi) in zip(t.iterrows(), t.iloc[1:].iterrows()):
            if lo["l0"] <= target <= hi["l0"]:
                span = math.log(hi["l0"]) - math.log(lo["l0"])
                w = (math.log(target) - math.log(lo["l0"])) / span if span else 0.0
                return {"l0": target, **{c: float(lo[c] + w * (hi[c] - lo[c])) for c in columns}}
        return {"l0": target, **{c: math.nan for c in columns}}

    def plot(self):
        """The trade-off: L0 (x) against FVU = 1 - explained variance (y), one point per coefficient,
        log-scaled where the values span more than a factor of 10; with CE loss recovered against L0
        beside it when that was measured. Returns a matplotlib Figure."""
        import matplotlib.pyplot as plt

        t = self.table.sort_values("coef")
        has_ce = "ce_loss_recovered" in t
        fig, axes = plt.subplots(1, 2 if has_ce else 1, figsize=(11 if has_ce else 6, 4.4), squeeze=False)
        panels = [("fvu", "FVU = 1 − explained variance\n(lower = better reconstruction)",
                   "Sparsity vs reconstruction")]
        if has_ce:
            panels.append(("ce_loss_recovered", "CE loss recovered\n(higher = better)", "Sparsity vs model loss"))
        for ax, (column, ylabel, title) in zip(axes[0], panels):
            ax.plot(t["l0"], t[column], "-", color="0.7", zorder=1)
            ax.scatter(t["l0"], t[column], c=range(len(t)), cmap="viridis", s=60, zorder=2,
                       edgecolors="black", linewidths=0.5)
            _log_if_wide(ax.xaxis, t["l0"])
            if column == "fvu":
                _log_if_wide(ax.yaxis, t[column])
            ax.set(xlabel="L0 = active features per token (lower = sparser)", ylabel=ylabel, title=title)
            ax.grid(True, which="major", alpha=0.3)
            ax.margins(0.18)
        fig.suptitle(f"Sparsity sweep: {len(t)} coefficients, evaluated on {self.evaluated_on} tokens", fontsize=12)
        fig.tight_layout()
        for ax, (column, _, _) in zip(axes[0], panels):  # after the layout: label offsets are in display units
            groups = _coincident(t["l0"].to_numpy(), t[column].to_numpy())
            labels = ["coef=" + ", ".join(f"{t['coef'].iloc[i]:g}" for i in members) for members in groups]
            points = [(t["l0"].iloc[members[0]], t[column].iloc[members[0]]) for members in groups]
            _place_labels(ax, labels, points, list(zip(t["l0"], t[column])))
        plt.close(fig)
        return fig

    def plot_history(self):
        """Training curves: reconstruction loss and L0 per step, one line per coefficient."""
        import matplotlib.pyplot as plt

        fig, (ax_recon, ax_l0) = plt.subplots(1, 2, figsize=(11, 3.8))
        for coef, h in sorted(self.histories.items()):
            ax_recon.plot(h["step"], h["recon"], label=f"coef={coef:g}")
            ax_l0.plot(h["step"], h["l0"], label=f"coef={coef:g}")
        scaled = any(sae.input_scale != 1.0 for sae in self.saes.values())   # trained on normalised rows
        ax_recon.set(xlabel="training step", ylabel="reconstruction MSE (batch" + (", normalised rows)" if scaled else ")"),
                     title="Reconstruction", yscale="log")
        ax_l0.set(xlabel="training step", ylabel="L0 (batch)", title="Active features per token")
        fig.suptitle("Training curves (on each step's batch), one line per sparsity coefficient", fontsize=12)
        ax_l0.legend(title="sparsity coef", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0,
                     fontsize=9)
        fig.tight_layout()  # makes room for the legend outside the axes
        plt.close(fig)
        return fig


def _coincident(x, y, tol: float = 0.02) -> list[list[int]]:
    """Consecutive points (in the table's order) that would overlap on the plot, grouped so that they
    share one label: closer than `tol` of the data's span on both axes."""
    def spread(v):
        finite = v[np.isfinite(v)]
        return (finite.max() - finite.min()) if len(finite) and finite.max() > finite.min() else 1.0
    sx, sy = spread(x), spread(y)
    groups: list[list[int]] = []
    for i in range(len(x)):
        j = groups[-1][-1] if groups else None
        if j is not None and abs(x[i] - x[j]) <= tol * sx and abs(y[i] - y[j]) <= tol * sy:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


#: Label offsets tried around a point (points: dx, dy), nearest first; ha follows the side. Beyond the
#: first ring a label gets a leader line to its point.
_LABEL_OFFSETS = [(dx * r, dy * r) for r in (1, 2, 3.2, 4.6) for dx, dy in
                  ((7, 6), (7, -14), (-7, 6), (-7, -14), (0, 12), (0, -20), (12, -4), (-12, -4))]
_NEAR_RING = 8         # the first ring: _LABEL_OFFSETS[:_NEAR_RING] need no leader line
_CLEARLY_NEARER = 1.5  # an unlined label's own point must be this many times nearer than any other
_POINT_RADIUS = 6.0   # points: a marker's half-width (s=60) plus a margin


def _place_labels(ax, labels: list[str], anchors: list[tuple], points: list[tuple]) -> None:
    """Annotate anchors[i] with labels[i] so that no label overlaps another label, a marker (of
    `points`) or leaves the axes, and none without a leader line sits about as near another marker as
    its own (a reader would pin it on that one): greedy, each label takes the first offset
    (`_LABEL_OFFSETS`) whose text box breaks none of these; when none is free, the least overlap."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    pixels = fig.dpi / 72.0
    frame = ax.get_window_extent(renderer)
    centres = [ax.transData.transform(p) for p in points]
    markers = [_box_around(c, _POINT_RADIUS * pixels) for c in centres]
    placed: list = []
    for label, anchor in zip(labels, anchors):
        own = ax.transData.transform(anchor)
        others = [c for c in centres if np.hypot(*(c - own)) > 2 * _POINT_RADIUS * pixels]
        best, best_cost = None, None
        for n, (dx, dy) in enumerate(_LABEL_OFFSETS):
            lined = n >= _NEAR_RING
            text = ax.annotate(label, anchor, textcoords="offset points", xytext=(dx, dy), fontsize=9,
                               ha="left" if dx > 0 else "right" if dx < 0 else "center", va="bottom",
                               annotation_clip=False,
                               arrowprops=dict(arrowstyle="-", color="0.55", lw=0.6, shrinkA=1, shrinkB=5)
                               if lined else None)
            box = text.get_window_extent(renderer)
            cost = sum(_overlap(box, other) for other in placed + markers) + _outside(box, frame)
            if not lined and any(_distance(box, c) < _CLEARLY_NEARER * _distance(box, own) for c in others):
                cost += box.width * box.height / 2     # ambiguous: another point about as near as its own
            if best is None or cost < best_cost:
                if best is not None:
                    best.remove()
                best, best_cost = text, cost
            else:
                text.remove()
            if cost == 0:
                break
        placed.append(best.get_window_extent(renderer))


def _box_around(xy, radius: float):
    from matplotlib.transforms import Bbox
    return Bbox.from_extents(xy[0] - radius, xy[1] - radius, xy[0] + radius, xy[1] + radius)


def _distance(box, xy) -> float:
    """Display distance from a point to a box (0 inside it)."""
    return float(np.hypot(max(box.x0 - xy[0], 0.0, xy[0] - box.x1), max(box.y0 - xy[1], 0.0, xy[1] - box.y1)))


def _overlap(a, b) -> float:
    """The area two display boxes share (0 when they are apart)."""
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(0.0, w) * max(0.0, h)


def _outside(box, frame) -> float:
    """The area of `box` outside `frame` (a label must stay inside the axes)."""
    return box.width * box.height - _overlap(box, frame)


DENSE_TICK_DECADES = 2.5   # the widest span ticked at 1, 2 and 5 times each power of ten


def _log_if_wide(axis, values) -> None:
    """A log scale on `axis` (ax.xaxis or ax.yaxis) when the values span more than a factor of 10,
    ticked in plain numbers (matplotlib's default labels every minor tick as "3×10¹", and neighbours
    overlap): at 1, 2 and 5 times each power of ten over up to `DENSE_TICK_DECADES` decades, at each
    power of ten over more."""
    from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

    values = [v for v in values if math.isfinite(v)]
    if values and min(values) > 0 and max(values) / min(values) > 10:
        getattr(axis.axes, f"set_{axis.axis_name}scale")("log")
        wide = math.log10(max(values) / min(values)) > DENSE_TICK_DECADES
        axis.set_major_locator(LogLocator(subs=(1.0,) if wide else (1.0, 2.0, 5.0)))
        axis.set_major_formatter(StrMethodFormatter("{x:g}"))
        axis.set_minor_formatter(NullFormatter())


def sparsity_sweep(activations, coefs=NOTEBOOK_COEFS, eval_activations=None, n_features: int | None = None,
                   epochs: int | None = None, steps: int | None = None, lr: float | None = None,
                   batch_size: int | None = None, model=None, texts=None, layer: int | None = None,
                   seed: int | None = None, progress: bool = True, device=None, config: TrainConfig | None = None
                   ) -> SweepResult:
    """Train one tied SAE per sparsity coefficient and compare them (the lab's exercise 3, the original
    notebook's first).

    activations: a single-layer `Activations` or a float tensor [n_tokens, d_model] to train on.
    Defaults are the notebook's: coefs (1e-2, 1e-3, 1e-4), n_features = 4 * d_model, 50 epochs over
    the rows, Adam with lr 1e-3, batches of 64, every SAE initialised as `TiedSAE(d_model, n_features,
    seed=seed)` (seed None: 0). With `steps`, exactly that many batches instead of `epochs`.
    config: a `TrainConfig` to train with instead of the notebook's loop (e.g. `TrainConfig.lab()`,
        the lab's recipe). Its fields win: seed, epochs, steps, lr or batch_size given as well must
        equal them (else ValueError); device (when given) and progress apply either way.
    eval_activations: held-out rows to measure on. Without them the SAEs are measured on their own
        training rows, as the notebook does (`result.evaluated_on` says which).
    model, texts (, layer): also measure CE loss recovered (`metrics.ce_loss_recovered`) on those
        texts; `layer` defaults to the activations' layer.
    All SAEs train together in one stacked model on the same batches (`training.trainer.train_stacked`): the
    numbers equal separate `train_sae` runs with the same seed, and it is several times faster.
    Ctrl-C stops training early and still evaluates the SAEs (`result.interrupted`).
    Returns a `SweepResult` (.table, .plot(), .plot_history(), .saes, .histories).
    """
    coefs = check_coefs("coefs", coefs)
    n = check_rows("activations", activations)
    d_model = row_width(activations)
    n_features = check_int("n_features", n_features, minimum=1, allow_none=True) or NOTEBOOK_FEATURES_PER_DIM * d_model
    if eval_activations is not None:
        check_rows("eval_activations", eval_activations, d_model)
    texts, layer = _check_ce_inputs(model, texts, layer, activations, d_model)
    config = experiment_config(config, NOTEBOOK_LOOP, seed, device, progress, lr=lr, batch_size=batch_size,
                               epochs=epochs, steps=steps)
    saes = [TiedSAE(d_model, n_features, seed=config.seed) for _ in coefs]
    run = train_stacked(saes, [activations] * len(coefs), coefs, config, trainer="saelab.sparsity_sweep (stacked)",
                        desc="sparsity sweep")
    evaluated_on = "training data" if eval_activations is None else "held-out"
    target = activations if eval_activations is None else eval_activations
    metrics = {coef: evaluate_unchecked(sae, target) for coef, sae in
               progress_bar(list(zip(coefs, saes)), progress=progress, desc="evaluating", unit="SAE")}
    rows = [{"coef": coef, **metrics[coef].as_dict()} for coef in coefs]
    if model is not None:   # one shared clean and zero-ablated pass for all the SAEs
        for row, ce in zip(rows, ce_loss_recovered_many(model, saes, texts, layer, hook=_hook_of(activations))):
            row.update(ce_loss_recovered=ce.score, ce_loss_spliced=ce.spliced, ce_loss_clean=ce.clean)
    rows = [{**row, "evaluated_on": evaluated_on} for row in rows]
    table = pd.DataFrame(rows)
    table = table[[c for c in table.columns if c != "n_tokens"] + ["n_tokens"]]
    first = saes[0].metadata
    settings = {"n_features": n_features, "d_model": d_model, "lr": first["lr"], "batch_size": config.batch_size,
                "epochs": first["epochs"], "steps": first["steps"], "seed": config.seed, "n_train_tokens": n,
                "layer": first.get("layer"), "model_name": first.get("model_name")}
    return SweepResult(table=table, saes=dict(zip(coefs, saes)), histories=dict(zip(coefs, run.histories)),
                       metrics=metrics, evaluated_on=evaluated_on, settings=settings, seconds=run.seconds,
                       interrupted=run.interrupted)


def _hook_of(activations) -> str:
    return activations.hook if isinstance(activations, Activations) else "resid_post"


def _check_ce_inputs(model, texts, layer, activations, width: int) -> tuple[list[str] | None, int | None]:
    """(texts, layer) for CE loss recovered: both None without a model; the layer defaults to the
    activations' and must match it, and the model's hook there must give rows of the activations' width."""
    if (model is None) != (texts is None):
        given = {name: "None" if value is None else "given" for name, value in (("model", model), ("texts", texts))}
        raise ValueError("model, texts: CE loss recovered needs both the model and the texts to run it on; "
                         f"got model={given['model']}, texts={given['texts']}")
    if model is None:
        return None, None
    check_model("model", model)
    texts = check_texts("texts", texts, allow_str=True)
    if layer is None:
        if not isinstance(activations, Activations):
            raise ValueError("layer: CE loss recovered needs the layer the activations came from; pass layer=... "
                             "(activations given as a tensor do not record it)")
        layer = activations.layer
    layer = check_layer("layer", layer, model.cfg.n_layers)
    if isinstance(activations, Activations) and activations.layer != layer:
        raise ValueError(f"layer: the activations come from layer {activations.layer}, got layer={layer}")
    hook_name = check_hook("activations", _hook_of(activations), model, [layer])[layer]
    hook_width = probe_width(model, hook_name, layer)
    if hook_width != width:
        raise ValueError(f"model: its {hook_name} gives rows of width {hook_width}, the activations' rows have "
                         f"width {width}; pass the model the activations came from")
    return texts, layer
