"""What the experiments that train SAEs share: the original notebook's training loop, and the fields
of a result holding SAEs trained together (`TrainedSAEs`: the sweep's and the layer comparison's)."""
from __future__ import annotations

from dataclasses import dataclass, field

from saelab.results import Result

#: The original notebook's loop: epochs over its rows, Adam lr, batch size, dictionary size.
NOTEBOOK_EPOCHS = 50
NOTEBOOK_LR = 1e-3
NOTEBOOK_BATCH_SIZE = 64
NOTEBOOK_FEATURES_PER_DIM = 4  # n_features = 4 * d_model
#: The notebook's training loop (the experiments' default TrainConfig).
NOTEBOOK_LOOP = {"lr": NOTEBOOK_LR, "batch_size": NOTEBOOK_BATCH_SIZE, "epochs": NOTEBOOK_EPOCHS}


@dataclass(repr=False, kw_only=True)
class TrainedSAEs(Result):
    """SAEs trained together, by key (a coefficient, a layer): saes (TiedSAE, settings in
    `sae.metadata`), histories (step, loss, recon, sparsity, l0 on each logged step's batch), metrics
    (EvalResult on the `evaluated_on` rows: "held-out" or "training data"), settings (the run's, as a
    dict), seconds (the training loop's wall time), interrupted (True when Ctrl-C stopped training
    early: the SAEs hold the weights of the steps done)."""
    saes: dict
    histories: dict
    metrics: dict
    evaluated_on: str
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0
    interrupted: bool = False
