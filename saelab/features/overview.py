"""Every feature of an SAE at once, from one pass over held-out rows: how often each fires (density), its
mean activation where it fires, and the tokens where it fires most. The feature browser plots the first
two against each other and searches the third.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from saelab.activations.rows import iter_row_batches
from saelab.utils import active, visible_token

OVERVIEW_COLUMNS = ("feature", "density", "mean_active", "max_activation", "top_tokens")


@dataclass
class FeatureOverview:
    """Per feature of an SAE, over held-out rows.

    density, mean_active, max_activation: [d_sae] float64 (fraction of rows where the feature is active; its
    mean and largest value there, 0 for a dead feature). top_tokens: per feature, the distinct tokens of
    the rows where it fires most, strongest first (as the card's top examples).
    """
    density: torch.Tensor
    mean_active: torch.Tensor
    max_activation: torch.Tensor
    top_tokens: list

    @property
    def table(self) -> pd.DataFrame:
        """One row per feature alive on these rows (density > 0): the scatter's points."""
        alive = torch.nonzero(self.density > 0).flatten().tolist()
        return pd.DataFrame([(f, float(self.density[f]), float(self.mean_active[f]), float(self.max_activation[f]),
                              " ".join(visible_token(t) for t in self.top_tokens[f])) for f in alive],
                            columns=list(OVERVIEW_COLUMNS))

    def search(self, query: str, limit: int = 20) -> list[int]:
        """Features whose top tokens contain `query` (case and surrounding whitespace ignored): those where it
        matches more of the top tokens first, then where the first match ranks higher, then by id."""
        needle = query.strip().lower()
        if not needle:
            return []
        scored = []
        for feature, tokens in enumerate(self.top_tokens):
            hits = [rank for rank, token in enumerate(tokens) if needle in token.strip().lower()]
            if hits:
                scored.append((-len(hits), hits[0], feature))
        return [feature for *_, feature in sorted(scored)[:limit]]


@torch.no_grad()
def feature_overview(sae, activations, k: int = 8, batch_size: int = 1024) -> FeatureOverview:
    """One streaming pass over `activations` (a checked single-layer Activations) through `sae` (checked,
    saelab's interface): counts, sums and a running top-k of rows per feature (`torch.topk`: rows with
    exactly equal activations may come in either order)."""
    d_sae = sae.d_sae
    count = torch.zeros(d_sae, dtype=torch.float64)
    total = torch.zeros(d_sae, dtype=torch.float64)
    best_values = torch.empty(0, d_sae)
    best_rows = torch.empty(0, d_sae, dtype=torch.int64)
    start = 0
    for batch in iter_row_batches(activations, batch_size):
        values = sae.encode_unchecked(batch.to(device=sae.W_dec.device, dtype=sae.W_dec.dtype)).float().cpu()
        count += active(values).sum(0)
        total += values.sum(0, dtype=torch.float64)
        rows = torch.arange(start, start + len(values))[:, None].expand(-1, d_sae)
        start += len(values)
        values, rows = torch.cat([best_values, values]), torch.cat([best_rows, rows])
        best_values, top = torch.topk(values, min(k, len(values)), dim=0)
        best_rows = rows.gather(0, top)
    density = count / start
    mean_active = torch.where(count > 0, total / count.clamp(min=1), 0.0)
    max_activation = best_values[0].double().clamp(min=0)
    return FeatureOverview(density=density, mean_active=mean_active, max_activation=max_activation,
                           top_tokens=_top_tokens(activations, best_values, best_rows))


def _top_tokens(activations, values: torch.Tensor, rows: torch.Tensor) -> list[list[str]]:
    """Per feature (a column of values / rows [k, d_sae]), the distinct tokens of its rows where it is
    active, in order; each token id decoded once."""
    ids = activations.token_ids[rows]                     # [k, d_sae]
    first_row = {}
    for token_id, row in zip(ids.flatten().tolist(), rows.flatten().tolist()):
        first_row.setdefault(token_id, row)
    text = {token_id: activations.str_token(row) for token_id, row in first_row.items()}
    firing = (values > 0).T.tolist()
    out = []
    for feature, column in enumerate(ids.T.tolist()):
        tokens = [text[t] for t, on in zip(column, firing[feature]) if on]
        out.append(list(dict.fromkeys(tokens)))
    return out
