"""TrainConfig: how `saelab.train_stacked` trains (the seed's Adam loop settings), and LAB_RECIPE, the lab's.

Every default of TrainConfig is the seed's loop (train_sae's numbers are unchanged by the fields
added for the lab's recipe); `TrainConfig.lab()` is the recipe the lab and `saelab run` use.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from saelab.training.batches import n_steps
from saelab.models import resolve_device
from saelab.utils import describe
from saelab.validate import check_bool, check_float, check_fraction, check_int

__all__ = ["TrainConfig", "LAB_RECIPE", "experiment_config"]


@dataclass(frozen=True)
class TrainConfig:
    """How to train: the seed's Adam loop settings (validated on construction). Every default is the
    seed's loop; `TrainConfig.lab()` is the lab's recipe (LAB_RECIPE).

    lr: Adam's learning rate; batch_size: rows per step; epochs: passes over the rows (ignored when
    `steps` is given: exactly that many batches); seed: the batch order (`batch_indices`) and the
    rows sampled by `init_density`; device: None picks cuda, then mps, then cpu; progress: a tqdm
    bar; log_every: a history row every this many steps (and at the last step); only those steps
    wait for the device.
    betas: Adam's (beta1, beta2). lr_decay: the last fraction of the steps over which lr falls
    linearly towards 0 (0: a constant lr, as in the seed).
    normalize: train on x / s with s = sqrt(mean ||x||^2 / d_model) over the training rows, so the rows
    have mean squared norm d_model on every model and a coefficient means the same everywhere; s is
    stored as `sae.input_scale` and applied by encode/decode, so the SAE still reads raw rows.
    init_norm: rescale every row of W to this norm before training (None: the seed's kaiming rows).
    init_density: set each b_enc_i so that feature i fires on this fraction of 8192 sampled training
    rows before training (None: nn.Linear's bias). normalize, init_norm and init_density act on an
    untrained SAE only (one without a recorded trainer); a trained SAE keeps its weights and scale.
    dense_l1: an extra sparsity penalty on the features whose running firing density (an exponential
    average over batches, `density_decay` per batch) is above `dense_target`: 0 there, rising linearly to
    dense_l1 times the SAE's own at 1.5 x dense_target (`trainer.DENSE_RAMP`; a ramp, not a step, so that
    a rounding difference cannot flip a feature's penalty); 0 (the seed's loss) turns it off. It changes only how training moves: the SAE's
    loss as `compute_loss` reports it, and its inference math, stay the seed's.
    """
    lr: float = 1e-3
    batch_size: int = 64
    epochs: int = 1
    steps: int | None = None
    seed: int = 0
    device: object = None
    progress: bool = True
    log_every: int = 10
    betas: tuple = (0.9, 0.999)
    lr_decay: float = 0.0
    normalize: bool = False
    init_norm: float | None = None
    init_density: float | None = None
    dense_l1: float = 0.0
    dense_target: float = 0.05
    density_decay: float = 0.99

    def __post_init__(self):
        checked = {"lr": check_float("lr", self.lr, minimum=0.0, strict=True),   # plain Python numbers (JSON-able)
                   "batch_size": check_int("batch_size", self.batch_size, minimum=1),
                   "epochs": check_int("epochs", self.epochs, minimum=1),
                   "steps": check_int("steps", self.steps, minimum=1, allow_none=True),
                   "seed": check_int("seed", self.seed, minimum=0),
                   "progress": check_bool("progress", self.progress),
                   "log_every": check_int("log_every", self.log_every, minimum=1),
                   "betas": _check_betas(self.betas),
                   "lr_decay": check_fraction("lr_decay", self.lr_decay),
                   "normalize": check_bool("normalize", self.normalize),
                   "init_norm": None if self.init_norm is None else check_float("init_norm", self.init_norm,
                                                                                minimum=0.0, strict=True),
                   "init_density": None if self.init_density is None else check_fraction(
                       "init_density", self.init_density, open_low=True, open_high=True),
                   "dense_l1": check_float("dense_l1", self.dense_l1, minimum=0.0),
                   "dense_target": check_fraction("dense_target", self.dense_target, open_low=True, open_high=True),
                   "density_decay": check_fraction("density_decay", self.density_decay, open_high=True)}
        for name, value in checked.items():
            object.__setattr__(self, name, value)
        resolve_device(self.device)  # validates

    @classmethod
    def build(cls, config: "TrainConfig | None" = None, **overrides) -> "TrainConfig":
        """`config` (default: TrainConfig()) with `overrides` (keyword arguments named as the fields)."""
        if config is not None and not isinstance(config, TrainConfig):
            raise ValueError(f"config: expected a saelab.TrainConfig or None, got {type(config).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {unknown}; training settings are {sorted(names)}")
        return dataclasses.replace(config or cls(), **overrides)

    @classmethod
    def lab(cls, **overrides) -> "TrainConfig":
        """The lab's recipe (LAB_RECIPE, see its comment and benchmarks/RESULTS.md), with `overrides`."""
        return cls.build(cls(**LAB_RECIPE), **overrides)

    def n_steps(self, n: int) -> int:
        """How many steps training on `n` rows takes."""
        return n_steps(n, self.batch_size, self.epochs, self.steps)

    def lr_at(self, step: int, total: int) -> float:
        """The learning rate of step `step` (1-based) of `total`: lr, falling linearly over the last
        round(lr_decay * total) steps (the last step runs at lr / that many)."""
        decay = round(self.lr_decay * total)
        left = total - step + 1
        return self.lr * min(1.0, left / decay) if decay and left <= decay else self.lr

    def metadata(self, n: int) -> dict:
        """The settings as recorded in `sae.metadata` (JSON-able, saved in cfg.json)."""
        return {"optimizer": "Adam", "lr": self.lr, "batch_size": self.batch_size,
                "epochs": self.epochs if self.steps is None else None, "steps": self.n_steps(n),
                "seed": self.seed, "n_train_tokens": n, "betas": list(self.betas), "lr_decay": self.lr_decay,
                "normalize": self.normalize, "init_norm": self.init_norm, "init_density": self.init_density,
                **({"dense_l1": self.dense_l1, "dense_target": self.dense_target,     # only when it acted
                    "density_decay": self.density_decay} if self.dense_l1 else {})}


#: The lab's recipe (`TrainConfig.lab()`; issues 12 and 22, measured in benchmarks/RESULTS.md): two epochs
#: over all training rows at batch 256 and lr 5e-3; rows normalised to mean squared norm d_model (so the
#: coefficients mean the same on every model); W's rows at norm 1 and biases that start every feature
#: firing on 5% of the rows (this keeps training out of the "dense basis" the seed's init falls into);
#: Adam beta2 0.99 and lr decay over the last 20%; up to half again the sparsity penalty on features firing
#: on more than 5% of the rows, in full from 7.5% (dense_l1: fewer dense features at the same L0, the second
#: epoch buying back the reconstruction). The seed's loss and inference math are unchanged.
LAB_RECIPE = {"lr": 5e-3, "batch_size": 256, "epochs": 2, "betas": (0.9, 0.99), "lr_decay": 0.2,
              "normalize": True, "init_norm": 1.0, "init_density": 0.05, "dense_l1": 0.5}


def _check_betas(betas) -> tuple[float, float]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas: expected a pair (beta1, beta2) of numbers in [0, 1), got {describe(betas)}")
    return tuple(check_fraction(f"betas[{i}]", b, open_high=True) for i, b in enumerate(betas))


def experiment_config(config, defaults: dict, seed: int | None, device, progress: bool, **loop) -> TrainConfig:
    """An experiment's TrainConfig.

    Without `config`: TrainConfig(**defaults) (the notebook's loop) with seed (0 when None) and the loop
    settings given (lr, batch_size, epochs, steps: those not None). With `config`: its fields win; a
    training setting given as well (seed or a loop setting, not None) must equal the config's field,
    else ValueError naming both (never silently replaced). device (when not None) and progress say
    where and how loudly it runs, and apply either way.
    """
    if config is not None and not isinstance(config, TrainConfig):
        raise ValueError(f"config: expected a saelab.TrainConfig or None, got {describe(config)}")
    given = {name: value for name, value in {"seed": seed, **loop}.items() if value is not None}
    run = {"progress": progress, **({} if device is None else {"device": device})}
    if config is None:
        return TrainConfig.build(TrainConfig(**{"seed": 0, **defaults}), **given, **run)
    for name, value in given.items():
        if value != getattr(config, name):
            raise ValueError(f"{name}: got {name}={value!r} and config.{name}={getattr(config, name)!r}; give it in "
                             f"one place (e.g. config=TrainConfig.lab({name}={value!r}) alone)")
    return TrainConfig.build(config, **run)
