"""Training: how tied SAEs learn from activation rows.

Modules, lowest first: `batches` (the seeded mini-batch order), `config` (TrainConfig and the lab's
recipe), `initialise` (the rows' scale and the data-dependent start), `trainer` (train_stacked, the
one trainer core, and train_sae), `lab_settings` (the lab's sizes per model, shared by the notebook
and `saelab run`).
"""
from saelab.training.batches import batch_indices
from saelab.training.config import LAB_RECIPE, TrainConfig
from saelab.training.lab_settings import LabSettings, lab_settings
from saelab.training.trainer import TrainResult, train_sae, train_stacked

__all__ = ["batch_indices", "TrainConfig", "LAB_RECIPE", "train_sae", "train_stacked", "TrainResult",
           "LabSettings", "lab_settings"]
