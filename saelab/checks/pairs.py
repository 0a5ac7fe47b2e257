"""Exercise 4 (Part 4): the most correlated feature pairs, checked against
`saelab.experiments.top_correlated_pairs`.

Recipe steps and the check that notices each one skipped or wrong: keep features active (> 0) on more
than min_density of the rows (a dead feature gives NaN, a rare one a spurious pair), Pearson
correlation of feature columns, distinct pairs only (no (i, i), no (j, i) after (i, j), i < j), the
highest first, exactly k, positions mapped back to feature ids.
"""
from __future__ import annotations

import math

import torch

from saelab.checks.core import call, fail, passed
from saelab.utils import active

CHECK = "check_top_pairs"
K, MIN_DENSITY = 6, 0.01
DEAD, RARE = 4, 8     # a feature that never fires; one active on 0.5% of rows, below MIN_DENSITY


def pair_features() -> torch.Tensor:
    """[400, 11] non-negative features: correlated groups, a dead one (4), a rare one (8) that
    correlates almost perfectly with feature 10, which is active on 5% of the rows."""
    g = torch.Generator().manual_seed(5)
    base = torch.relu(torch.randn(400, 4, generator=g))
    noise = 0.4 * torch.randn(400, 11, generator=g)
    f = torch.zeros(400, 11)
    f[:, 0], f[:, 1], f[:, 2] = base[:, 0], base[:, 0] + noise[:, 1], base[:, 1]
    f[:, 3] = base[:, 1] * 0.5 + base[:, 0] * 0.5 + noise[:, 3].abs()
    f[:, 5] = base[:, 2] + noise[:, 5] ** 2
    f[:, 6] = base[:, 3]
    f[:, 7] = base[:, 2] * base[:, 3] + noise[:, 7].abs()
    f[:2, RARE] = torch.tensor([3.0, 2.0])
    f[:, 9] = base[:, 3] + noise[:, 9].abs() * 2
    f[:2, 10] = torch.tensor([3.0, 2.0])
    f[2:20, 10] = 0.05 * noise[2:20, 10].abs() + 0.01
    return torch.relu(f)


def _as_pairs(got) -> list[tuple[int, int, float]]:
    try:
        return [(int(i), int(j), float(c)) for i, j, c in got]
    except (TypeError, ValueError):
        fail(CHECK, "top_pairs should return a list of (i, j, corr) tuples: two feature ids and their correlation, "
                    f"got {type(got).__name__}.")


def _check_distinct(got) -> None:
    if any(math.isnan(c) for _, _, c in got):
        fail(CHECK, "a correlation is NaN: a feature that never fires has zero variance. Keep only features active "
                    "on more than min_density of the rows: (features > 0).float().mean(0) > min_density.")
    if any(i == j for i, j, _ in got):
        fail(CHECK, "the list has self-pairs (i, i) with correlation 1. Keep only pairs i < j (torch.triu_indices "
                    "with offset=1) before taking the largest values.")
    keys = [frozenset((i, j)) for i, j, _ in got]
    if len(set(keys)) < len(keys):
        fail(CHECK, "the list has the same pair twice, as (i, j) and (j, i): the correlation matrix is symmetric, so "
                    "keep only its upper triangle (i < j).")
    if any(i > j for i, j, _ in got):
        fail(CHECK, "write each pair with the smaller feature id first, (i, j) with i < j.")


def _check_ids(got, ref, features) -> None:
    """CheckFailed when the pairs are not the reference's feature ids (as a set)."""
    keys, ref_keys = {(i, j) for i, j, _ in got}, {(i, j) for i, j, _ in ref}
    if keys == ref_keys:
        return
    if any(RARE in p for p in keys):
        density = (features[:, RARE] > 0).float().mean().item()
        fail(CHECK, f"feature {RARE} is active on {density:.1%} of the rows, below min_density = {MIN_DENSITY}: keep "
                    "only features active on more than min_density of the rows, the fraction of rows where it is "
                    "> 0: (features > 0).float().mean(0) > min_density.")
    active_ids = torch.nonzero(active(features).float().mean(0) > MIN_DENSITY).flatten().tolist()
    if all(j < len(active_ids) for _, j in keys) and {(active_ids[i], active_ids[j]) for i, j in keys} == ref_keys:
        fail(CHECK, "the ids are positions among the frequently active features, not feature ids: map them back with "
                    "active[i], active[j].")
    fail(CHECK, f"the pairs {sorted(keys)} differ from the reference {sorted(ref_keys)}. Correlate feature COLUMNS "
                "(torch.corrcoef(features[:, active].T)), then take the k largest values with i < j.")


def check_top_pairs(top_pairs) -> None:
    """Exercise 4: check `top_pairs(features, k, min_density) -> [(i, j, corr), ...]` against
    `saelab.experiments.top_correlated_pairs` on fixed features [400, 11] (with a dead and a rare one)."""
    from saelab.experiments.correlation import top_correlated_pairs

    features = pair_features()
    ref = top_correlated_pairs(features, k=K, min_density=MIN_DENSITY)
    got = _as_pairs(call(CHECK, f"top_pairs(features, k={K}, min_density={MIN_DENSITY})", top_pairs, features,
                         k=K, min_density=MIN_DENSITY))
    _check_distinct(got)
    m = int((active(features).float().mean(0) > MIN_DENSITY).sum())
    every = top_correlated_pairs(features, k=m * (m - 1) // 2, min_density=MIN_DENSITY)
    if len(got) != K:
        extra = " (all of them: take the first k after sorting)" if len(got) == len(every) else ""
        fail(CHECK, f"top_pairs returned {len(got)} pairs{extra}, expected k = {K}.")
    if {(i, j) for i, j, _ in got} == {(i, j) for i, j, _ in every[-K:]}:
        fail(CHECK, "these are the k LEAST correlated pairs: sort the correlations in descending order "
                    "(argsort(descending=True)) before taking the first k.")
    _check_ids(got, ref, features)
    cs = [c for _, _, c in got]
    if cs != sorted(cs, reverse=True):
        fail(CHECK, "the right pairs, but not in order: sort them by correlation, highest first.")
    if [(i, j) for i, j, _ in got] != [(i, j) for i, j, _ in ref] or \
            not all(math.isclose(a, c, abs_tol=1e-4) for a, (_, _, c) in zip(cs, ref)):
        fail(CHECK, "the pairs are right but the correlation values differ; use Pearson correlation (torch.corrcoef) "
                    "of the features' activations over rows.")
    passed(CHECK, f"the top {K} pairs (no self-pairs, no duplicates, rare and dead features left out, highest "
                  "first, feature ids) match saelab's reference.")
