"""Exercise 5 of the lab (the original notebook's third), early vs late layers: one SAE per layer on
activations collected in one pass.

The seed compares layers 2 and 10 of GPT-2 small's 12 by raw reconstruction loss; the residual
stream's norm grows with depth, so raw MSE is not comparable across layers. The table reports the
fraction of variance unexplained (FVU) beside it. `notebook_layers` and `notebook_layer` map the
original notebook's layers onto a model of any depth.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch

from saelab.activations.rows import Activations, iter_row_batches
from saelab.activations.collect import collect_activations
from saelab.data import TEST_PROMPTS
from saelab.experiments.runs import NOTEBOOK_FEATURES_PER_DIM, NOTEBOOK_LOOP, TrainedSAEs
from saelab.metrics import evaluate_unchecked
from saelab.models import accumulation
from saelab.results import format_table, fmt
from saelab.sae.tied import TiedSAE
from saelab.training.trainer import train_stacked
from saelab.training.config import TrainConfig, experiment_config
from saelab.utils import active, describe, progress_bar
from saelab.validate import check_float, check_int, check_layers, check_model

NOTEBOOK_N_LAYERS = 12          # GPT-2 small, the original notebook's model
NOTEBOOK_COMPARE_LAYERS = (2, 10)
NOTEBOOK_SWEEP_LAYER = 6
NOTEBOOK_LAYER_COEF = 5e-4      # the notebook's coefficient for exercises 2 and 3
N_TOP_FEATURES = 5


def _n_layers(model_or_n_layers) -> int:
    n = getattr(getattr(model_or_n_layers, "cfg", None), "n_layers", model_or_n_layers)
    return check_int("n_layers", n, minimum=1)


def _scale_layer(layer: int, n_layers: int) -> int:
    """The notebook's layer (of 12) at the same relative depth in a model with n_layers, rounded half up."""
    return min(n_layers - 1, math.floor(layer * n_layers / NOTEBOOK_N_LAYERS + 0.5))


def notebook_layers(n_layers) -> tuple[int, ...]:
    """The original notebook's early and late layers (2 and 10 of GPT-2 small's 12) scaled to a model's depth.

    n_layers: an int or a model (its cfg.n_layers). 12 -> (2, 10), 4 -> (1, 3), 24 -> (4, 20),
    2 -> (0, 1); a 1-layer model has only (0,).
    """
    n = _n_layers(n_layers)
    return tuple(dict.fromkeys(_scale_layer(layer, n) for layer in NOTEBOOK_COMPARE_LAYERS))


def notebook_layer(n_layers) -> int:
    """The original notebook's layer for the sparsity sweep (6 of 12: the middle) scaled to a model's depth.

    n_layers: an int or a model (its cfg.n_layers). 12 -> 6, 4 -> 2, 24 -> 12, 1 -> 0.
    """
    return _scale_layer(NOTEBOOK_SWEEP_LAYER, _n_layers(n_layers))


# The old names (until saelab.experiments, the lab and the checks say notebook_*).


@dataclass(repr=False, kw_only=True)
class LayerComparison(TrainedSAEs):
    """What `compare_layers` returns: `TrainedSAEs` keyed by layer, and

    table: one row per layer: layer, activation_norm (mean L2 norm of a row), mse, fvu,
        explained_variance, l0, dead_fraction, top_features (the 5 with the highest mean activation),
        evaluated_on, n_tokens.
    prompt_table: one row per (prompt, layer): the number of active features at the prompt's last
        token and the strongest feature with its value.
    activations: the collected training activations (all layers; `activations[layer]` for one).
    """
    table: pd.DataFrame
    prompt_table: pd.DataFrame
    activations: Activations

    def summary(self) -> str:
        t = self.table
        parts = ", ".join(f"layer {int(r.layer)}: norm {fmt(r.activation_norm)}, FVU {fmt(r.fvu)}, L0 {fmt(r.l0)}"
                          for r in t.itertuples())
        s = self.settings
        stop = " INTERRUPTED" if self.interrupted else ""
        return (f"Layer comparison ({s.get('model_name')}, {s.get('n_features')} features, coef "
                f"{s.get('sparsity_coef'):g}, {s.get('steps')} steps{stop}, {self.seconds:.1f}s; evaluated on "
                f"{self.evaluated_on}): {parts}")

    def __repr__(self) -> str:
        prompts = format_table(self.prompt_table).to_string(index=False)
        return f"{super().__repr__()}\n\nLast token of each test prompt:\n{prompts}"

    def _repr_html_(self) -> str:
        prompts = format_table(self.prompt_table).to_html(index=False, border=0)
        return f"{super()._repr_html_()}<p>Last token of each test prompt:</p>{prompts}"

    def plot(self):
        """Bars per layer: activation norm, MSE, FVU and L0 side by side (a matplotlib Figure). MSE grows
        with the norm; FVU divides by the variance and compares layers fairly."""
        import matplotlib.pyplot as plt

        panels = [("activation_norm", "activation norm\n(mean ‖x‖)"), ("mse", "MSE\n(raw, grows with the norm)"),
                  ("fvu", "FVU\n(1 − explained variance)"), ("l0", "L0\n(active features per token)")]
        fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
        labels = [f"layer {int(layer)}" for layer in self.table["layer"]]
        colours = plt.get_cmap("viridis")([0.2 + 0.6 * i / max(1, len(labels) - 1) for i in range(len(labels))])
        for ax, (column, title) in zip(axes, panels):
            values = self.table[column].to_numpy()
            bars = ax.bar(labels, values, color=colours)
            ax.bar_label(bars, labels=[f"{v:.3g}" for v in values], fontsize=9, padding=2)
            ax.set_title(title, fontsize=10)
            ax.margins(y=0.18)
            ax.spines[["top", "right"]].set_visible(False)
        fig.suptitle(f"Early vs late layers (evaluated on {self.evaluated_on})", fontsize=11)
        fig.tight_layout()
        plt.close(fig)
        return fig


def _prompts(test_prompts) -> dict[str, str]:
    if test_prompts is None:
        return dict(TEST_PROMPTS)
    if isinstance(test_prompts, str):
        test_prompts = [test_prompts]
    if isinstance(test_prompts, (list, tuple)):
        test_prompts = {p: p for p in test_prompts}
    if (not isinstance(test_prompts, dict) or not test_prompts
            or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in test_prompts.items())):
        raise ValueError(f"test_prompts: expected a dict name -> prompt or a list of non-empty prompts, "
                         f"got {describe(test_prompts)}")
    return test_prompts


@torch.no_grad()
def _norm_and_top_features(sae: TiedSAE, activations, k: int) -> tuple[float, list[int]]:
    """(mean L2 norm of the rows, the k features with the highest mean activation), streamed."""
    weight = sae.W_dec
    dtype, home = accumulation(weight.device)   # float64 sums on the device; on MPS float32 there, float64 on CPU
    norm_sum = torch.zeros((), dtype=torch.float64, device=home)
    feature_sum = torch.zeros(sae.d_sae, dtype=torch.float64, device=home)
    n = 0
    for batch in iter_row_batches(activations, 4096):
        x = batch.to(device=weight.device, dtype=weight.dtype)
        norm_sum += x.norm(dim=-1).sum(dtype=dtype).to(home, torch.float64)
        feature_sum += sae.encode_unchecked(x).sum(dim=0, dtype=dtype).to(home, torch.float64)
        n += x.shape[0]
    top = torch.argsort(feature_sum, descending=True, stable=True)[:k]
    return (norm_sum / n).item(), [int(f) for f in top]


@torch.no_grad()
def _prompt_rows(model, saes: dict[int, TiedSAE], hook: str, prompts: dict[str, str]) -> list[dict]:
    from transformer_lens.utilities import get_act_name

    names = {layer: get_act_name(hook, layer) for layer in saes}
    rows = []
    for name, prompt in prompts.items():
        _, cache = model.run_with_cache(prompt, names_filter=list(names.values()),
                                        stop_at_layer=max(saes) + 1)
        for layer, sae in saes.items():
            weight = sae.W_dec
            features = sae.encode_unchecked(cache[names[layer]][0, -1].to(device=weight.device, dtype=weight.dtype))
            value, strongest = features.max(dim=0)
            rows.append({"prompt_name": name, "prompt": prompt, "layer": layer,
                         "n_active": int(active(features).sum()), "strongest_feature": int(strongest),
                         "strongest_value": float(value)})
    return rows


def compare_layers(model, texts, layers=None, test_prompts=None, n_features: int | None = None,
                   sparsity_coef: float = NOTEBOOK_LAYER_COEF, epochs: int | None = None,
                   batch_size: int | None = None, max_tokens: int | None = None, eval_texts=None,
                   seed: int | None = None, progress: bool = True, device=None, steps: int | None = None,
                   lr: float | None = None, config: TrainConfig | None = None,
                   eval_max_tokens: int | None = None) -> LayerComparison:
    """Train one SAE per layer and compare the layers (the lab's exercise 5, the original notebook's third).

    model: a HookedTransformer (e.g. `saelab.load_model("tiny")`); texts: the texts to collect
    `resid_post` rows from, for all `layers` in ONE forward pass per batch (`collect_activations`).
    Defaults are the notebook's: an early and a late layer (`notebook_layers`: 2 and 10 of 12, scaled
    to the model's depth), n_features = 4 * d_model, sparsity_coef 5e-4, 50 epochs, Adam lr 1e-3,
    batches of 64, the four TEST_PROMPTS. steps: exactly that many batches instead of `epochs`.
    max_tokens caps the rows collected; eval_texts: measure on held-out texts instead of the training
    rows (the notebook measures on its training rows), at most eval_max_tokens of them.
    layers: distinct layers (a repeated layer is a ValueError naming it).
    config: a `TrainConfig` instead of the notebook's loop (e.g. `TrainConfig.lab()`). Its fields win:
    seed (None: 0 without a config), epochs, steps, lr or batch_size given as well must equal them
    (else ValueError); device (when given) and progress apply either way.
    The SAEs train together in one stacked model (same results as one `train_sae` per layer).
    Returns a `LayerComparison` (.table with FVU, .prompt_table, .plot(), .saes).
    """
    model = check_model("model", model, needs=("cfg", "run_with_cache", "to_tokens"))
    layer_list = notebook_layers(model) if layers is None else check_layers("layers", layers, model.cfg.n_layers)
    prompts = _prompts(test_prompts)
    n_features = check_int("n_features", n_features, minimum=1, allow_none=True) or \
        NOTEBOOK_FEATURES_PER_DIM * model.cfg.d_model
    coef = check_float("sparsity_coef", sparsity_coef, minimum=0.0)
    config = experiment_config(config, NOTEBOOK_LOOP, seed, device, progress, lr=lr, batch_size=batch_size,
                               epochs=epochs, steps=steps)
    acts = collect_activations(model, texts, list(layer_list), max_tokens=max_tokens, progress=progress)
    held_out = None if eval_texts is None else collect_activations(model, eval_texts, list(layer_list),
                                                                   max_tokens=eval_max_tokens, progress=progress)
    saes = [TiedSAE(acts.width, n_features, seed=config.seed) for _ in layer_list]
    run = train_stacked(saes, [acts[layer] for layer in layer_list], [coef] * len(layer_list), config,
                        trainer="saelab.compare_layers (stacked)", desc="layer SAEs",
                        names=[f"activations of layer {layer}" for layer in layer_list])
    target = acts if held_out is None else held_out
    evaluated_on = "training data" if held_out is None else "held-out"
    rows, metrics = [], {}
    for layer, sae in zip(progress_bar(layer_list, progress=progress, desc="evaluating", unit="layer"), saes):
        metrics[layer] = m = evaluate_unchecked(sae, target[layer])
        norm, top = _norm_and_top_features(sae, target[layer], N_TOP_FEATURES)
        rows.append({"layer": layer, "activation_norm": norm, "mse": m.mse, "fvu": m.fvu,
                     "explained_variance": m.explained_variance, "l0": m.l0, "dead_fraction": m.dead_fraction,
                     "top_features": top, "evaluated_on": evaluated_on, "n_tokens": m.n_tokens})
    by_layer = dict(zip(layer_list, saes))
    meta = saes[0].metadata
    settings = {"model_name": acts.model_name, "layers": layer_list, "n_features": n_features, "sparsity_coef": coef,
                "lr": meta["lr"], "batch_size": config.batch_size, "epochs": meta["epochs"], "steps": meta["steps"],
                "seed": config.seed, "n_train_tokens": len(acts)}
    return LayerComparison(table=pd.DataFrame(rows), prompt_table=pd.DataFrame(_prompt_rows(model, by_layer, acts.hook,
                                                                                            prompts)),
                           saes=by_layer, histories=dict(zip(layer_list, run.histories)), metrics=metrics,
                           activations=acts, evaluated_on=evaluated_on, settings=settings, seconds=run.seconds,
                           interrupted=run.interrupted)
