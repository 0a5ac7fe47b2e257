"""The original notebook's three exercises as one-line functions with structured, plottable results.

- `sparsity_sweep`: one tied SAE per sparsity coefficient, trained together in one stacked model.
- `feature_correlation`: which features fire together (streaming Pearson correlation).
- `compare_layers`: early vs late layer SAEs, with FVU so that layers compare fairly.
- `untied_twin`: a tied SAE beside an untied one (SAELens's standard SAE) trained on the same rows and
  steps at its L0: why an encoder free to differ from the decoder fires more selectively.

`notebook_layers(n_layers)` and `notebook_layer(n_layers)` give the original notebook's layers
(2 and 10, and 6, of GPT-2 small's 12) scaled to a model's depth.
"""
from saelab.experiments.correlation import CorrelationResult, feature_correlation
from saelab.experiments.layers import LayerComparison, compare_layers, notebook_layer, notebook_layers
from saelab.experiments.sparsity import SweepResult, sparsity_sweep
from saelab.experiments.untied import TieComparison, untied_twin

__all__ = ["sparsity_sweep", "SweepResult", "feature_correlation", "CorrelationResult",
           "compare_layers", "LayerComparison", "notebook_layers", "notebook_layer", "untied_twin", "TieComparison"]
