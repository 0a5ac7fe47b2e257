"""The seed notebook's three exercises as one-line functions with structured, plottable results.

- `sparsity_sweep`: one tied SAE per sparsity coefficient, trained together in one stacked model.
- `feature_correlation`: which features fire together (streaming Pearson correlation).
- `compare_layers`: early vs late layer SAEs, with FVU so that layers compare fairly.
"""
from saelab.experiments.correlation import CorrelationResult, feature_correlation
from saelab.experiments.layers import LayerComparison, compare_layers, seed_layers, seed_sweep_layer
from saelab.experiments.sparsity import SweepResult, sparsity_sweep

__all__ = ["sparsity_sweep", "SweepResult", "feature_correlation", "CorrelationResult",
           "compare_layers", "LayerComparison", "seed_layers", "seed_sweep_layer"]
