"""Exercise 4 of the lab (the original notebook's second), co-activating features: Pearson correlation
of SAE features across tokens.

The original notebook builds the dense [n_tokens, n_features] feature matrix and calls `np.corrcoef`. Here the
features are encoded batch by batch and only float64 sums and cross products of the selected
features are kept, so memory grows with the number of selected features, not with the tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import pandas as pd
import torch

from saelab.activations.rows import iter_row_batches
from saelab.metrics import evaluate_unchecked
from saelab.models import accumulation
from saelab.results import Result, fmt, pct
from saelab.sae.interface import as_sae
from saelab.utils import active, describe, progress_bar, zero_variance
from saelab.validate import check_fraction, check_int, check_rows

PAIR_COLUMNS = ("feature_i", "feature_j", "correlation", "decoder_cosine", "density_i", "density_j")
NOTEBOOK_MIN_DENSITY = 0.01  # the original notebook keeps features active on more than 1% of tokens
NOTEBOOK_TOP_K = 10
HEATMAP_FEATURES = 40        # what `heatmap` shows by default: tick labels stay readable (>= 8 pt)
HEATMAP_TICK_PT = 8.0


class _Comoments:
    """Running float64 sums of a [rows, m] stream: sum and cross products about a fixed shift
    (the first batch's mean, which keeps the float64 sums well conditioned)."""

    def __init__(self, m: int, device):
        self.n = 0
        self.shift = None          # [m] float64 on `home`
        self._shift_here = None    # the same in the batches' dtype on their device
        self.dtype, self.home = accumulation(device)   # (float64, device); on MPS (float32, cpu)
        self.total = torch.zeros(m, dtype=torch.float64, device=self.home)
        self.cross = torch.zeros(m, m, dtype=torch.float64, device=self.home)

    def add(self, values: torch.Tensor) -> None:
        values = values.to(self.dtype)
        if self.shift is None:
            self._shift_here = values.mean(dim=0)
            self.shift = self._shift_here.to(self.home, torch.float64)
        centred = values - self._shift_here
        self.total += centred.sum(dim=0).to(self.home, torch.float64)
        self.cross += (centred.T @ centred).to(self.home, torch.float64)
        self.n += values.shape[0]

    def correlation(self) -> tuple[np.ndarray, np.ndarray]:
        """(Pearson correlation [m, m] float64, constant [m] bool). Rows/columns of constant
        (zero-variance) features are 0 with 1 on the diagonal: they correlate with nothing."""
        m = self.total.shape[0]
        if self.n == 0 or m == 0:
            return np.zeros((m, m)), np.zeros(m, dtype=bool)
        mean = self.total / self.n
        cov = self.cross / self.n - torch.outer(mean, mean)
        var = cov.diagonal().clamp(min=0)
        second_moment = var + (mean + self.shift).pow(2)
        constant = zero_variance(var, second_moment, self.dtype)
        std = torch.where(constant, torch.ones_like(var), var.sqrt())
        corr = (cov / torch.outer(std, std)).clamp(-1, 1)
        corr[constant, :] = 0.0
        corr[:, constant] = 0.0
        corr.fill_diagonal_(1.0)
        return corr.cpu().numpy(), constant.cpu().numpy()


def _pairs(corr: np.ndarray, ids: np.ndarray, k: int, constant: np.ndarray) -> list[tuple[int, int, float]]:
    """The k most correlated distinct pairs (feature_i < feature_j), highest correlation first
    (ties in id order), leaving out constant features."""
    keep = np.flatnonzero(~constant)
    i, j = np.triu_indices(len(keep), k=1)
    if len(i) == 0:
        return []
    values = corr[keep[i], keep[j]]
    order = np.argsort(-values, kind="stable")[:k]
    return [(int(ids[keep[i[o]]]), int(ids[keep[j[o]]]), float(values[o])) for o in order]


def _selected(density: torch.Tensor, min_density: float) -> np.ndarray:
    return torch.nonzero(density > min_density).flatten().cpu().numpy()


def top_correlated_pairs(features: torch.Tensor, k: int = NOTEBOOK_TOP_K,
                         min_density: float = NOTEBOOK_MIN_DENSITY) -> list[tuple[int, int, float]]:
    """The k most correlated feature pairs of a dense feature matrix [n_tokens, n_features], as
    [(i, j, corr)] with i < j feature ids, highest first, among features active (`utils.active`: != 0)
    on more than `min_density` of the rows; constant features are left out. The reference for `check_top_pairs`;
    `feature_correlation` computes the same from an SAE and activations in streaming batches."""
    if not isinstance(features, torch.Tensor) or features.ndim != 2 or not features.is_floating_point():
        raise ValueError(f"features: expected a float tensor [n_tokens, n_features], got {describe(features)}")
    if features.shape[0] == 0:
        raise ValueError("features: expected at least one row, got 0 rows")
    check_int("k", k, minimum=1)
    min_density = check_fraction("min_density", min_density, open_high=True)
    dtype, _ = accumulation(features.device)
    ids = _selected(active(features).to(dtype).mean(dim=0), min_density)
    moments = _Comoments(len(ids), features.device)
    moments.add(features[:, torch.as_tensor(ids, dtype=torch.int64, device=features.device)])
    corr, constant = moments.correlation()
    return _pairs(corr, ids, k, constant)


@dataclass(repr=False)
class CorrelationResult(Result):
    """What `feature_correlation` returns.

    table: the top pairs: feature_i < feature_j, correlation, decoder_cosine (cosine similarity of
        the two decoder directions), density_i, density_j; empty when no feature passed min_density.
    matrix: [m, m] float64 Pearson correlation among `features` (the m feature ids that passed).
    density: [n_features] fraction of tokens on which each feature is active.
    constant_features: ids that passed min_density but never vary (left out of the pairs).
    Pairs with equal correlation are ordered by feature id (feature_i, then feature_j).
    """
    table: pd.DataFrame
    matrix: np.ndarray
    features: np.ndarray
    density: torch.Tensor
    min_density: float
    n_tokens: int
    constant_features: list[int] = field(default_factory=list)

    caption = ("correlation: Pearson r of the two features' activations across tokens; decoder_cosine: cosine "
               "similarity of their decoder directions; density: fraction of tokens where each is active.")

    @property
    def message(self) -> str | None:
        """Why there is nothing to show, or None."""
        if len(self.features) == 0:
            top = float(self.density.max()) if self.density.numel() else 0.0
            return (f"No feature is active on more than {pct(self.min_density)} of the {self.n_tokens:,} tokens "
                    f"(the most active: {pct(top)}); lower min_density or train the SAE longer.")
        if self.table.empty:
            return (f"Only {len(self.features) - len(self.constant_features)} varying feature(s) passed "
                    f"min_density = {self.min_density:g}: no pair to correlate.")
        return None

    def summary(self) -> str:
        if self.message:
            return f"Feature correlation: {self.message}"
        top = self.table.iloc[0]
        const = f", {len(self.constant_features)} constant left out" if self.constant_features else ""
        return (f"Feature correlation: {len(self.features)} of {len(self.density)} features active on more than "
                f"{pct(self.min_density)} of {self.n_tokens:,} tokens{const}; top pair {int(top.feature_i)} ↔ "
                f"{int(top.feature_j)} (r = {fmt(top.correlation)}, decoder cosine {fmt(top.decoder_cosine)})")

    def heatmap_features(self, max_features: int = HEATMAP_FEATURES) -> np.ndarray:
        """The feature ids `heatmap` shows: all when at most max_features passed, else the features of
        the top pairs first, then the most active ones, up to max_features; sorted by id."""
        check_int("max_features", max_features, minimum=2)
        if len(self.features) <= max_features:
            return self.features
        chosen = list(dict.fromkeys(int(f) for f in self.table[["feature_i", "feature_j"]].to_numpy().ravel()))
        density = self.density[torch.as_tensor(self.features)].numpy()
        for f in self.features[np.argsort(-density, kind="stable")]:
            if len(chosen) >= max_features:
                break
            if int(f) not in chosen:
                chosen.append(int(f))
        return np.array(sorted(chosen[:max_features]), dtype=np.int64)

    def heatmap(self, max_features: int = HEATMAP_FEATURES):
        """The correlation matrix (at most max_features features, default 40: see `heatmap_features`)
        on a diverging scale centred on 0 (RdBu_r, -1 to 1), feature ids as tick labels (>= 8 pt; the
        figure grows with the number shown) and a caption saying what is shown. A matplotlib Figure;
        with nothing to show, a figure that says why."""
        import matplotlib.pyplot as plt

        shown = self.heatmap_features(max_features) if len(self.features) else self.features
        m = len(shown)
        side = float(np.clip(0.16 * m + 2.0, 5.5, 40.0))   # inches: ~11.5 pt per row for 8-pt labels
        fig, ax = plt.subplots(figsize=(side + 1.4, side + 0.9), layout="constrained")
        if m == 0:
            ax.text(0.5, 0.5, "\n".join(_wrap(self.message, 60)), ha="center", va="center", fontsize=11,
                    transform=ax.transAxes)
            ax.set_axis_off()
            plt.close(fig)
            return fig
        where = np.searchsorted(self.features, shown)
        image = ax.imshow(self.matrix[np.ix_(where, where)], cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        size = max(HEATMAP_TICK_PT, min(10.0, 0.55 * side * 72 / m))
        ax.set_xticks(range(m), [str(f) for f in shown], rotation=90, fontsize=size)
        ax.set_yticks(range(m), [str(f) for f in shown], fontsize=size)
        ax.set(xlabel="feature id", ylabel="feature id")
        width = max(40, int(7 * side))    # characters per caption line
        fig.suptitle("Feature correlation", fontsize=12)
        ax.set_title("\n".join(_wrap(self.heatmap_subset(m), width)), fontsize=10)
        fig.colorbar(image, ax=ax, shrink=0.8, label="Pearson correlation")
        fig.supxlabel("\n".join(_wrap(self.heatmap_caption(m), width + 30)), fontsize=9, color="0.25")
        plt.close(fig)
        return fig

    def heatmap_subset(self, m: int) -> str:
        """Which features the heatmap shows (its title)."""
        if m < len(self.features):
            return (f"{m} of the {len(self.features)} features active on > {pct(self.min_density)} of tokens "
                    f"(the top pairs' features, then the most active)")
        return f"all {m} features active on > {pct(self.min_density)} of tokens"

    def heatmap_caption(self, m: int) -> str:
        """The heatmap's caption: what the colours are and over which tokens."""
        return (f"Pearson correlation of feature activations across {self.n_tokens:,} tokens, among features active "
                f"on more than {pct(self.min_density)} of them ({m} shown). Red = fire together, "
                f"blue = one fires when the other does not, diagonal = 1.")

    def plot(self, max_features: int = HEATMAP_FEATURES):
        """Same as `heatmap`."""
        return self.heatmap(max_features)


def _wrap(text: str, width: int) -> list[str]:
    import textwrap
    return textwrap.wrap(text or "", width)


@torch.no_grad()
def feature_correlation(sae, activations, min_density: float = NOTEBOOK_MIN_DENSITY, top_k: int = NOTEBOOK_TOP_K,
                        batch_size: int = 4096, progress: bool = True) -> CorrelationResult:
    """Which features fire together: Pearson correlation of feature activations across tokens (the
    lab's exercise 4, the original notebook's second), among the features active on more than
    `min_density` of the tokens (its 1%), and the `top_k` (10) most correlated distinct pairs.

    sae: any SAE with saelab's SAE interface (`saelab.as_sae`).
    activations: a single-layer `Activations` or a float tensor [n_tokens, d_in], read twice in
    batches of `batch_size`: once for the densities (`metrics.evaluate`), once for float64 sums and
    cross products of the selected features (memory [m, m], independent of n_tokens). Equals
    `np.corrcoef` on the dense feature matrix; equal correlations are ordered by feature id.
    Constant features (zero variance) are reported in `constant_features` and left out of the pairs.
    Returns a `CorrelationResult` (.table, .heatmap()).
    """
    sae = as_sae("sae", sae)
    n = check_rows("activations", activations, sae.d_in)
    min_density = check_fraction("min_density", min_density, open_high=True)
    check_int("top_k", top_k, minimum=1)
    check_int("batch_size", batch_size, minimum=1)

    density = evaluate_unchecked(sae, activations, batch_size).feature_density    # [n_features]
    ids = _selected(density, min_density)
    weight = sae.W_dec
    moments = _Comoments(len(ids), weight.device)
    if len(ids):
        index = torch.as_tensor(ids, dtype=torch.int64, device=weight.device)
        for batch in _progress(iter_row_batches(activations, batch_size), n, batch_size, progress):
            x = batch.to(device=weight.device, dtype=weight.dtype)
            moments.add(sae.encode_unchecked(x).index_select(1, index))
    corr, constant = moments.correlation()
    pairs = _pairs(corr, ids, top_k, constant)
    directions = torch.nn.functional.normalize(weight.detach().to(moments.home, torch.float64), dim=1)
    rows = [(i, j, c, float(directions[i] @ directions[j]), float(density[i]), float(density[j])) for i, j, c in pairs]
    table = pd.DataFrame(rows, columns=list(PAIR_COLUMNS)).astype({"feature_i": "int64", "feature_j": "int64"})
    return CorrelationResult(table=table, matrix=corr, features=ids.astype(np.int64), density=density,
                             min_density=min_density, n_tokens=n, constant_features=[int(f) for f in ids[constant]])


def _progress(batches: Iterable, n: int, batch_size: int, progress: bool):
    bar = progress_bar(total=-(-n // batch_size), progress=progress, desc="feature correlation", unit="batch")
    try:
        for batch in batches:
            yield batch
            bar.update(1)
    finally:
        bar.close()
