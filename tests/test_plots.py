"""Figures as a student sees them: no overlapping labels, legends outside the data, readable ticks, captions.

Built from hand-made results with the real run's numbers (the sweep's low coefficients lie close together)."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from saelab.experiments.correlation import CorrelationResult  # noqa: E402
from saelab.experiments.sparsity import SweepResult  # noqa: E402

COEFS = [1e-3, 1, 3, 10, 30]


@pytest.fixture(scope="module")
def sweep():
    table = pd.DataFrame({"coef": COEFS, "l0": [160, 137, 98, 44, 6], "fvu": [0.02, 0.025, 0.04, 0.09, 0.3],
                          "ce_loss_recovered": [0.996, 0.995, 0.992, 0.976, 0.833], "n_tokens": [1000] * 5})
    steps = np.arange(0, 200, 10)
    histories = {c: pd.DataFrame({"step": steps, "recon": np.exp(-steps / 50) + 0.01 * i, "l0": 160.0 - 30 * i + 0 * steps})
                 for i, c in enumerate(COEFS)}
    return SweepResult(table=table, saes={}, histories=histories, metrics={}, evaluated_on="held-out")


def _draw(fig):
    """Draw a (closed) figure on an Agg canvas: text extents are then in display pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def _boxes(fig, texts):
    renderer = _draw(fig)
    return [t.get_window_extent(renderer) for t in texts]


def test_sweep_labels_never_overlap_each_other_or_the_points(sweep):
    fig = sweep.plot()
    for ax in fig.axes:
        labels = [t for t in ax.texts if t.get_text().startswith("coef=")]
        assert sorted(float(c) for t in labels for c in t.get_text()[5:].split(", ")) == sorted(COEFS)
        boxes = _boxes(fig, labels)
        for i, a in enumerate(boxes):
            assert ax.get_window_extent().contains(a.x0, a.y0) and ax.get_window_extent().contains(a.x1, a.y1)
            for b in boxes[i + 1:]:
                assert not a.overlaps(b), (labels[i].get_text(), a, b)
            for x, y in ax.collections[0].get_offsets():
                px, py = ax.transData.transform((x, y))
                assert not (a.x0 < px < a.x1 and a.y0 < py < a.y1), labels[i].get_text()


def test_sweep_labels_sit_nearest_their_own_point():
    """The lab's run: coef 0.1 (L0 121, CE 1.000) and 0.5 (L0 97, CE 0.999) lie close; each label must be
    nearer its own marker than any other, or a reader pins it on the wrong one (it once was)."""
    table = pd.DataFrame({"coef": [0.1, 0.5, 1, 2, 4, 8], "l0": [121, 97.1, 55.3, 34.3, 21.2, 10.4],
                          "fvu": [0.000684, 0.019, 0.0966, 0.149, 0.2, 0.285],
                          "ce_loss_recovered": [1.0, 0.999, 0.992, 0.986, 0.978, 0.955], "n_tokens": [10000] * 6})
    fig = SweepResult(table=table, saes={}, histories={}, metrics={}, evaluated_on="held-out").plot()
    renderer = _draw(fig)
    for ax in fig.axes:
        centres = {f"coef={c:g}": ax.transData.transform(xy) for c, xy in zip(table.coef, ax.collections[0].get_offsets())}
        for text in (t for t in ax.texts if t.get_text().startswith("coef=")):
            box = text.get_window_extent(renderer)
            distance = {name: np.hypot(max(box.x0 - x, 0, x - box.x1), max(box.y0 - y, 0, y - box.y1))
                        for name, (x, y) in centres.items()}
            assert min(distance, key=distance.get) == text.get_text(), (ax.get_title(), text.get_text(), distance)


@pytest.mark.parametrize("fvu, expected", [
    ([0.02, 0.025, 0.04, 0.09, 0.3], {"0.02", "0.05", "0.1", "0.2"}),                   # 1.2 decades: 1, 2, 5
    ([1e-5, 1e-4, 1e-3, 0.01, 0.3], {"1e-05", "0.0001", "0.001", "0.01", "0.1", "1"}),  # 4.5 decades: powers of 10
])
def test_sweep_log_axis_ticks_do_not_crowd(sweep, fvu, expected):
    """A log axis over a few decades is ticked at 1, 2 and 5; over many, only at powers of ten (at 1, 2
    and 5 over five decades its labels ran into each other)."""
    wide = SweepResult(table=sweep.table.assign(fvu=fvu), saes={}, histories=sweep.histories, metrics={},
                       evaluated_on="held-out")
    ax = wide.plot().axes[0]
    low, high = ax.get_ylim()
    shown = {t.get_text().replace("\u2212", "-") for t in ax.get_yticklabels() if low <= t.get_position()[1] <= high}
    assert shown == expected, shown
    boxes = _boxes(ax.figure, [t for t in ax.get_yticklabels() if low <= t.get_position()[1] <= high])
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_sweep_title_says_where_it_was_evaluated(sweep):
    title = sweep.plot()._suptitle
    assert "held-out" in title.get_text() and title.get_fontsize() >= 11


@pytest.mark.parametrize("figure", ["history", "train"])
def test_legends_sit_outside_the_data(sweep, figure):
    if figure == "history":
        fig = sweep.plot_history()
    else:
        from saelab.training.trainer import TrainResult
        h = pd.DataFrame({"step": [10, 20, 30], "loss": [1.0, 0.5, 0.3], "recon": [0.9, 0.4, 0.2],
                          "sparsity": [0.1] * 3, "l0": [50.0, 40.0, 30.0]})
        fig = TrainResult(sae=None, history=h, train_metrics=None, eval_metrics=None, seconds=1.0,
                          tokens_per_second=1.0).plot()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert legends
    _draw(fig)
    for legend in legends:
        box = legend.get_window_extent()
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent()), "the legend covers an axes' data area"
        assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1)  # not cut off


def _correlation(n_features=150):
    g = np.random.default_rng(0)
    ids = np.arange(0, 4 * n_features, 4)
    pairs = pd.DataFrame([(int(ids[i]), int(ids[i + 1]), 0.9 - 0.01 * i, 0.1, 0.05, 0.05) for i in range(10)],
                         columns=["feature_i", "feature_j", "correlation", "decoder_cosine", "density_i", "density_j"])
    return CorrelationResult(table=pairs, matrix=np.corrcoef(g.normal(size=(500, n_features)).T), features=ids,
                             density=torch.rand(4 * n_features, generator=torch.Generator().manual_seed(0)),
                             min_density=0.01, n_tokens=5000)


@pytest.mark.parametrize("max_features", [None, 100])
def test_heatmap_ticks_are_readable_and_it_has_a_caption(max_features):
    result = _correlation()
    fig = result.heatmap() if max_features is None else result.heatmap(max_features)
    ax = fig.axes[0]
    ticks = ax.get_xticklabels() + ax.get_yticklabels()
    assert len(ax.get_xticklabels()) == (40 if max_features is None else 100)
    assert min(t.get_fontsize() for t in ticks) >= 8
    boxes = _boxes(fig, ax.get_yticklabels())
    for a, b in zip(boxes, boxes[1:]):
        assert not a.overlaps(b)
    top = set(result.table["feature_i"]) | set(result.table["feature_j"])
    assert top <= {int(t.get_text()) for t in ax.get_xticklabels()}
    caption = fig._supxlabel.get_text()
    assert "Pearson correlation" in caption and "5,000 tokens" in caption and "1.00%" in caption
    assert "top pairs" in ax.get_title()
