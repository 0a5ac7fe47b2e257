"""The lab's sizes and recipe for a model: one `LabSettings`, used by the notebook and `saelab run` alike.

    settings = lab_settings("tiny")                     # every shipped training row, the lab's recipe
    settings = lab_settings("gpt2-small", max_tokens=3000)   # small --max-tokens: small work
    estimate_seconds(settings, model.cfg, "cpu")          # what `saelab run` prints for a slow run

Training is two epochs over the rows (`TrainConfig.lab()`), so the steps follow the rows: a small
`max_tokens` means a small run on any model. The coefficients act on rows normalised to mean squared
norm d_model (`TrainConfig.normalize`), so the grid and the chosen coefficient tell the same story
on every model and layer. `SAELAB_LAB_SIZE=small` (or `size="small"`) gives the reduced sizes that
tests and CI use for non-tiny models, e.g. the GPT-2 small stand-in.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

from saelab.training.config import TrainConfig
from saelab.utils import describe
from saelab.validate import check_int

__all__ = ["LabSettings", "lab_settings", "estimate_seconds", "SWEEP_COEFS", "COEF", "SIZE_ENV", "SIZES"]

#: The sweep's coefficients on normalised rows: 0.1 (a hundred times the original notebook's 1e-3, and
#: still weak: the penalty is the MEAN of |features|), then 0.5 to 8; COEF is the SAE studied after the
#: sweep (L0 about 21 on tiny's layer 2, see benchmarks/RESULTS.md). Not 1e-3 itself: with next to no
#: penalty, training at the recipe's lr does not settle (a rounding difference of 1e-16 grows to a 9%
#: change of the weights; RESULTS.md, "Precision"), so its numbers would differ from CPU to CPU.
SWEEP_COEFS = (0.1, 0.5, 1.0, 2.0, 4.0, 8.0)
COEF = 4.0
#: The environment variable that picks the sizes ("full", the default, or "small").
SIZE_ENV = "SAELAB_LAB_SIZE"
#: Sizes per (model kind, size): training rows per layer (None: all the shipped training texts give),
#: held-out rows, held-out texts for CE loss recovered.
SIZES = {("tiny", "full"): {"max_tokens": None, "eval_tokens": 10_000, "ce_texts": 16},
         ("other", "full"): {"max_tokens": 200_000, "eval_tokens": 20_000, "ce_texts": 32},
         ("tiny", "small"): {"max_tokens": 4_000, "eval_tokens": 2_000, "ce_texts": 4},
         ("other", "small"): {"max_tokens": 2_000, "eval_tokens": 1_000, "ce_texts": 1}}
#: Rows the shipped training texts give on tiny (BOS excluded), for estimates without a max_tokens.
TINY_TRAIN_ROWS = 219_091
#: What `estimate_seconds` assumes: a fixed overhead (loading, figures, cards, the report) plus the
#: work's float operations at CPU_FLOPS per second. Fitted on a 2-core machine to two runs of
#: `saelab run`: tiny with every row (48 s) and the GPT-2 small stand-in with --max-tokens 3000 (92 s,
#: with 3 CE texts; with today's 1 it takes 66 s, estimated 72 s).
#: GPU_FLOPS (100x) is a guess: no GPU run has calibrated it.
OVERHEAD_SECONDS = 30.0
CPU_FLOPS = 1e11
GPU_FLOPS = 1e13


@dataclass(frozen=True)
class LabSettings:
    """The lab's sizes and recipe for one model.

    max_tokens: training rows per layer (None: every row of the shipped training texts);
    eval_tokens: held-out rows; ce_texts: held-out texts for CE loss recovered; coefs / coef: the
    sweep's coefficients and the one studied after it; n_features_per_dim: the dictionary is this
    times d_model; train: the TrainConfig (the lab's recipe, two epochs: steps follow the rows).
    """
    model_name: str
    size: str
    max_tokens: int | None
    eval_tokens: int
    ce_texts: int
    coefs: tuple = SWEEP_COEFS
    coef: float = COEF
    n_features_per_dim: int = 4
    train: TrainConfig = TrainConfig.lab(progress=False)

    def as_dict(self) -> dict:
        """JSON-able settings (for a run's manifest.json)."""
        out = asdict(self)
        out["train"] = {k: v for k, v in out["train"].items() if k not in ("device", "progress")}
        out["coefs"] = list(self.coefs)
        return out


def _size(size) -> str:
    size = os.environ.get(SIZE_ENV, "full") if size is None else size
    if size not in ("full", "small"):
        raise ValueError(f"size: expected 'full' or 'small' (or ${SIZE_ENV} set to one), got {describe(size)}")
    return size


def lab_settings(model_name: str = "tiny", max_tokens: int | None = None, size: str | None = None) -> LabSettings:
    """The lab's settings for `model_name`: SIZES for its kind ("tiny" or any other model) and `size`
    (None: $SAELAB_LAB_SIZE, else "full"). max_tokens caps the training rows, and then the held-out
    rows (half as many, at least 1,000) and the CE texts (one per 2,000 rows, at least 1) shrink
    with it, so that a small max_tokens gives a small run."""
    if not isinstance(model_name, str) or not model_name.strip():
        raise ValueError(f"model_name: expected a model name such as 'tiny' or 'gpt2-small', got {describe(model_name)}")
    size = _size(size)
    sizes = dict(SIZES[("tiny" if model_name == "tiny" else "other", size)])
    if check_int("max_tokens", max_tokens, minimum=1, allow_none=True) is not None:
        sizes["max_tokens"] = max_tokens if sizes["max_tokens"] is None else min(max_tokens, sizes["max_tokens"])
        sizes["eval_tokens"] = min(sizes["eval_tokens"], max(1_000, sizes["max_tokens"] // 2))
        sizes["ce_texts"] = min(sizes["ce_texts"], max(1, sizes["max_tokens"] // 2_000))
    return LabSettings(model_name=model_name, size=size, **sizes)


def _forward_flops(cfg, tokens: float, unembed: bool) -> float:
    """Float operations of `tokens` through the model (2 per weight per token; the unembedding when asked)."""
    d, n_layers = cfg.d_model, cfg.n_layers
    per_token = 2 * 12 * n_layers * d * d + (2 * d * cfg.d_vocab if unembed else 0)
    return per_token * tokens


def estimate_seconds(settings: LabSettings, model_cfg, device) -> float:
    """Seconds a `saelab run` with `settings` is expected to take on `device` (a rough estimate from the
    work's float operations: collection passes, CE loss recovered and training; CPU_FLOPS / GPU_FLOPS)."""
    if not isinstance(settings, LabSettings):
        raise ValueError(f"settings: expected a saelab.training.lab_settings.LabSettings, got {describe(settings)}")
    for field in ("d_model", "n_layers", "d_vocab", "n_ctx"):
        if not isinstance(getattr(model_cfg, field, None), int):
            raise ValueError(f"model_cfg: expected a model config with an integer {field} (model.cfg), "
                             f"got {describe(model_cfg)}")
    rows = settings.max_tokens or TINY_TRAIN_ROWS
    # collection: the BOS section, the sweep's layer, the two layers compared, and their held-out rows
    collect = _forward_flops(model_cfg, 50 * 128 + 2 * rows + 2 * settings.eval_tokens, unembed=False)
    # CE loss recovered: per text, a clean and a zeroed pass shared by the sweep's SAEs, one spliced each
    ce_tokens = settings.ce_texts * min(model_cfg.n_ctx, 512) * (2 + len(settings.coefs))
    ce = _forward_flops(model_cfg, ce_tokens, unembed=True)
    n_features = settings.n_features_per_dim * model_cfg.d_model
    n_saes = len(settings.coefs) + 2
    train = 10 * model_cfg.d_model * n_features * rows * settings.train.epochs * n_saes
    flops = GPU_FLOPS if str(getattr(device, "type", device)).startswith("cuda") else CPU_FLOPS
    return math.ceil(OVERHEAD_SECONDS + (collect + ce + train) / flops)


#: What a run folder holds beside its SAEs (report, figures, tables, cards), at most, in bytes.
RUN_EXTRA_BYTES = 4 << 20


def estimate_bytes(settings: LabSettings, model_cfg) -> int:
    """Bytes a `saelab run` with checked `settings` writes, at most: its SAE folders (the sweep's and the two
    layers', float32 W_enc and W_dec and biases) and RUN_EXTRA_BYTES; checked against the free space
    before the long work."""
    d, n_features = model_cfg.d_model, settings.n_features_per_dim * model_cfg.d_model
    return (len(settings.coefs) + 2) * 4 * (2 * d * n_features + d + n_features) + RUN_EXTRA_BYTES
