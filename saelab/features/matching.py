"""Matching two SAEs' dictionaries: for each feature of one, the other's feature whose decoder
direction is closest (cosine), e.g. a student's SAE against a reference SAE."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from saelab.results import Result, fmt, pct
from saelab.sae.interface import as_sae
from saelab.validate import check_int

@dataclass(repr=False)
class FeatureMatches(Result):
    """For each feature of SAE a, the feature of SAE b whose decoder direction is closest.

    table: feature (of a), match (of b), cosine (of their decoder rows), best cosine first, ties
    by feature id.
    """
    table: pd.DataFrame
    d_sae_b: int = 0

    caption = "cosine: of the two features' decoder directions (rows of W_dec); 1 = the same direction."

    def summary(self) -> str:
        c = self.table["cosine"]
        return (f"{len(c)} features matched to {self.d_sae_b} features by decoder cosine: median {fmt(c.median())}, "
                f"{pct(float((c > 0.9).mean()))} above 0.9 (best 20 shown)")

    def shown_table(self) -> pd.DataFrame:
        """The 20 best matches (the whole table stays in `.table`)."""
        return self.table.head(20)


@torch.no_grad()
def match_features(a, b, chunk: int = 1024) -> FeatureMatches:
    """For each feature of SAE `a`, the feature of SAE `b` with the highest decoder cosine.

    a, b: any SAEs with saelab's SAE interface and the same d_in. Computed on a's device in float32
    over chunks of `chunk` features of a (memory [chunk, d_sae_b]), so dictionaries of 24,576
    features fit. Ties go to the lower id of b. Returns `FeatureMatches` (.table sorted by cosine).
    """
    a, b = as_sae("a", a), as_sae("b", b)
    check_int("chunk", chunk, minimum=1)
    if a.d_in != b.d_in:
        raise ValueError(f"b: expected an SAE with d_in = {a.d_in} (a's), got d_in = {b.d_in}")
    device = a.W_dec.device
    unit_b = torch.nn.functional.normalize(b.W_dec.detach().to(device=device, dtype=torch.float32), dim=1)
    ids_b = torch.arange(b.d_sae, device=device)
    best, where = [], []
    for start in range(0, a.d_sae, chunk):
        rows = torch.nn.functional.normalize(a.W_dec[start:start + chunk].detach().float(), dim=1)
        cosines = rows @ unit_b.T                                        # [chunk, d_sae_b]
        values = cosines.max(dim=1).values
        # the lowest id among equal maxima, on every device (max's own index is not specified on CUDA)
        index = torch.where(cosines == values[:, None], ids_b, b.d_sae).min(dim=1).values
        best.append(values.cpu())
        where.append(index.cpu())
    table = pd.DataFrame({"feature": range(a.d_sae), "match": torch.cat(where).tolist(),
                          "cosine": torch.cat(best).tolist()})
    table = table.sort_values(["cosine", "feature"], ascending=[False, True], kind="stable").reset_index(drop=True)
    return FeatureMatches(table=table, d_sae_b=b.d_sae)
