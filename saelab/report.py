"""The whole lab, headless: `run_lab` collects activations, runs the sparsity sweep, feature
co-activation, the layer comparison and feature cards, and writes an HTML report (images embedded,
opens offline), the figures as PNG, the tables as CSV and the SAEs in SAELens format.
`saelab run` (cli.py) calls it.
"""
from __future__ import annotations

import dataclasses
import html
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from saelab.report_page import ReportPage
from saelab.training.lab_settings import LabSettings, lab_settings
from saelab.utils import describe

N_CARDS = 4
#: The BOS section reads the first this many tokens of each of 50 held-out texts (enough to compare norms).
BOS_CONTEXT = 128
N_STAGES = 8
def not_in_manifest(folder: Path) -> list[str]:
    """What in a previous run folder its manifest.json does not list (everything when it has no readable
    manifest): what a rerun must not delete."""
    import json

    from saelab.files import not_listed
    try:
        listed = set(json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return not_listed(folder, set())
    return not_listed(folder, listed | {"manifest.json"})


def _unless_interrupted(result):
    """`result`, unless Ctrl-C cut its training short: a run (unlike the notebook) keeps no partial SAEs,
    so KeyboardInterrupt goes on to the caller (the CLI: "saelab: interrupted", the folder as it was)."""
    if result.interrupted:
        raise KeyboardInterrupt
    return result


def _stage(n: int, total: int, text: str) -> None:
    print(f"[{n}/{total}] {text}", file=sys.stderr, flush=True)


def _bos_norms(model, texts, layer):
    """(DataFrame of row norms for BOS vs other rows, with the largest distance between two BOS rows;
    norms of BOS rows; norms of other rows)."""
    import pandas as pd

    from saelab.activations.collect import collect_activations
    context = min(BOS_CONTEXT, model.cfg.n_ctx)
    acts = collect_activations(model, texts, [layer], exclude_bos=False, context_length=context, progress=False)[layer]
    norms = acts.rows.norm(dim=-1)
    bos = acts.position == 0
    table = pd.DataFrame({"rows": ["BOS (position 0)", "all other tokens"],
                          "count": [int(bos.sum()), int((~bos).sum())],
                          "mean_norm": [float(norms[bos].mean()), float(norms[~bos].mean())],
                          "max_norm": [float(norms[bos].max()), float(norms[~bos].max())],
                          "max_distance_to_first_row": [float((acts.rows[bos] - acts.rows[bos][0]).norm(dim=-1).max()),
                                                        float((acts.rows[~bos] - acts.rows[~bos][0]).norm(dim=-1).max())]})
    return table, norms[bos], norms[~bos]


def _bos_figure(bos_norms, other_norms, layer):
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 3.2))
    lo = max(1e-3, float(min(bos_norms.min(), other_norms.min())))
    bins = np.geomspace(lo, float(max(bos_norms.max(), other_norms.max())) * 1.05, 60)
    ax.hist(other_norms.numpy(), bins=bins, color="tab:blue", alpha=0.8, label="other tokens")
    ax.hist(bos_norms.numpy(), bins=bins, color="tab:red", alpha=0.9, label="BOS (position 0)")
    ax.set(xscale="log", yscale="log", xlabel=f"L2 norm of the residual stream after layer {layer}",
           ylabel="rows (log)", title="Why BOS rows are excluded")
    ax.legend()
    fig.tight_layout()
    plt.close(fig)
    return fig


def _pick_card_features(correlation, density, n: int) -> list[int]:
    """Features for cards: the top correlated pair, then alive, not-dense features nearest the median
    density (typical features rather than the densest)."""
    import torch

    chosen: list[int] = []
    if len(correlation.table):
        chosen += [int(correlation.table.feature_i.iloc[0]), int(correlation.table.feature_j.iloc[0])]
    alive = torch.nonzero((density > 0.001) & (density < 0.1)).flatten()
    if len(alive) == 0:
        alive = torch.nonzero(density > 0).flatten()
    if len(alive):
        median = density[alive].median()
        for f in alive[(density[alive] - median).abs().argsort()].tolist():
            if len(chosen) >= n:
                break
            if f not in chosen:
                chosen.append(int(f))
    return chosen[:n]


@dataclass
class _Lab:
    """What every section of the run shares."""
    model_name: str
    model: object
    device: object
    seed: int
    settings: LabSettings
    layer: int
    train_texts: list
    test_texts: list
    report: ReportPage
    saes_dir: Path
    progress: bool

    @property
    def train(self):
        """The lab's recipe (`settings.train`) with the run's seed."""
        return dataclasses.replace(self.settings.train, seed=self.seed)


def _setup(model_name: str, out: Path, seed: int, device, settings: LabSettings, progress: bool, announce=None) -> _Lab:
    from saelab import __version__
    from saelab.data import load_texts
    from saelab.experiments import notebook_layer
    from saelab.models import load_model, resolve_device

    dev = resolve_device(device)
    model = load_model(model_name, device=dev)
    _stage(1, N_STAGES, f"loaded model {model_name!r} on {dev}")
    if announce is not None:
        announce(model, dev)
    lab = _Lab(model_name, model, dev, seed, settings, notebook_layer(model), load_texts("train"), load_texts("test"),
               ReportPage(out), out / "saes", progress)
    lab.report.add(f"<p class='note'>Model <code>{html.escape(model_name)}</code> ({model.cfg.n_layers} layers, "
                   f"d_model {model.cfg.d_model}) on {dev}; seed {seed}; saelab {__version__}. Tied ReLU SAEs with "
                   f"{settings.n_features_per_dim * model.cfg.d_model} features ({settings.n_features_per_dim} × "
                   f"d_model) on <code>resid_post</code>, trained with the lab's recipe (<code>TrainConfig.lab()</code>: "
                   f"{settings.train.epochs} epochs, rows normalised to mean squared norm d_model) on the shipped training texts and "
                   f"evaluated on held-out test texts. Tables are in <code>tables/</code>, "
                   f"figures in <code>figures/</code>, SAEs (SAELens format) in <code>saes/</code>, feature cards in "
                   f"<code>cards/</code>; <code>manifest.json</code> lists the run's settings and files.</p>")
    return lab


def _activations_section(lab: _Lab):
    """Section 1: the training and held-out rows, and why BOS rows are dropped."""
    from saelab.activations.collect import collect_activations

    layer, report = lab.layer, lab.report
    cap = lab.settings.max_tokens
    _stage(2, N_STAGES, f"collecting activations at layer {layer} ({'all' if cap is None else f'up to {cap:,}'} "
                        f"training tokens)")
    bos_table, bos, other = _bos_norms(lab.model, lab.test_texts[:50], layer)
    acts = collect_activations(lab.model, lab.train_texts, [layer], max_tokens=cap, progress=lab.progress)[layer]
    test_acts = collect_activations(lab.model, lab.test_texts, [layer], max_tokens=lab.settings.eval_tokens,
                                    progress=lab.progress)[layer]
    report.add("<h2>Part 2 (exercise 2): Activations, without the BOS rows</h2>")
    report.text(f"{len(acts):,} training rows and {len(test_acts):,} held-out rows of resid_post at layer {layer} "
                f"(the original notebook's layer 6 of 12 at the same relative depth). BOS rows are dropped: at "
                f"position 0 the model sees only the BOS token, so every text's BOS row is the same vector (largest "
                f"distance between two: {bos_table.max_distance_to_first_row[0]:.1e}), with "
                f"{bos_table.mean_norm[0] / bos_table.mean_norm[1]:.2f}× the mean norm of the other rows here (on "
                "GPT-2 many times more). Kept in, they are repeated copies of one uninformative point that skew "
                "training and every metric.")
    report.table(bos_table, "bos_norms", f"Residual norms of BOS rows and of the other rows (the first {BOS_CONTEXT} "
                                         f"tokens of 50 held-out texts).")
    report.figure(_bos_figure(bos, other, layer), "bos_norms")
    return acts, test_acts


def _sweep_section(lab: _Lab, acts, test_acts):
    """Section 2: the sparsity sweep, its SAEs saved, training rows vs held-out rows."""
    import pandas as pd

    from saelab.experiments import sparsity_sweep
    from saelab.metrics import evaluate

    report = lab.report
    settings = lab.settings
    _stage(3, N_STAGES, f"sparsity sweep: {len(settings.coefs)} SAEs, {settings.train.n_steps(len(acts))} steps each")
    sweep = _unless_interrupted(sparsity_sweep(
        acts, coefs=settings.coefs, eval_activations=test_acts, config=lab.train, device=lab.device,
        n_features=settings.n_features_per_dim * acts.width, model=lab.model,
        texts=lab.test_texts[:settings.ce_texts], progress=lab.progress))
    _save_saes(lab, sweep, lambda coef: f"sweep_layer{lab.layer}_coef{coef:g}")
    report.section("Part 3 (exercise 3): Sparsity sweep", sweep, "sparsity_sweep",
                   "One SAE per sparsity coefficient, measured on held-out rows. mse: squared error per dimension "
                   "(SAELens's MSE is d_model times larger); l1: sum of |features| per token; l0: active features "
                   "per token; fvu: fraction of variance unexplained; dead_fraction / dense_fraction: share of "
                   "features never active / active on more than 10% of tokens; ce_loss_clean and ce_loss_spliced: "
                   "the model's next-token cross-entropy in nats per token without and with the SAE spliced in; "
                   "ce_loss_recovered: 1 = the SAE costs nothing, 0 = as bad as zeroing the activation. See the "
                   "glossary at the end.")
    report.figure(sweep.plot(), "sparsity_tradeoff", "The trade-off: sparser codes (lower L0) reconstruct worse.")
    report.figure(sweep.plot_history(), "sparsity_training", "Training curves (values on each step's batch).")
    flatter = pd.DataFrame([{"coef": c, "fvu_training_rows": evaluate(s, acts).fvu,
                             "fvu_held_out": sweep.metrics[c].fvu} for c, s in sweep.saes.items()])
    report.table(flatter, "train_vs_heldout",
                 "The original notebook measured its SAEs on the rows they were trained on; held-out rows give the "
                 "honest number (with its 5 prompts repeated 10 times the gap is far larger).")
    return sweep


def _save_saes(lab: _Lab, result, folder_name) -> None:
    """Each SAE of a `TrainedSAEs` result in SAELens format, as saes/<folder_name(key)>."""
    for key, sae in result.saes.items():
        sae.save(lab.saes_dir / folder_name(key))


def _correlation_section(lab: _Lab, sae, test_acts):
    """Section 3: feature co-activation of the studied SAE, and where its top pair fires."""
    from saelab.experiments import feature_correlation
    from saelab.features.cards import top_activating_examples

    report = lab.report
    _stage(4, N_STAGES, "feature co-activation")
    correlation = feature_correlation(sae, test_acts, progress=lab.progress)
    report.add("<h2>Part 4 (exercise 4): Feature co-activation</h2>")
    report.text(f"The SAE with sparsity_coef {lab.settings.coef:g} (near the knee of the trade-off). "
                f"{correlation.summary()}")
    if len(correlation.table):
        report.table(correlation.table, "top_correlated_pairs",
                     "Most correlated distinct pairs among features active on more than 1% of held-out tokens; "
                     "decoder_cosine = cosine similarity of their decoder directions.")
        report.figure(correlation.heatmap(), "correlation_heatmap")
        i, j = int(correlation.table.feature_i.iloc[0]), int(correlation.table.feature_j.iloc[0])
        report.add(f"<h3>Where the top pair fires: features {i} and {j}</h3>")
        for f in (i, j):
            report.add(top_activating_examples(sae, test_acts, f, k=6).html())
    return correlation


def _layers_section(lab: _Lab) -> None:
    """Section 4: early vs late layers, their SAEs saved."""
    from saelab.experiments import compare_layers

    report = lab.report
    _stage(5, N_STAGES, "early vs late layers")
    settings = lab.settings
    layers = _unless_interrupted(compare_layers(
        lab.model, lab.train_texts, max_tokens=settings.max_tokens, eval_texts=lab.test_texts,
        eval_max_tokens=settings.eval_tokens, sparsity_coef=settings.coef, config=lab.train,
        n_features=settings.n_features_per_dim * lab.model.cfg.d_model, progress=lab.progress, device=lab.device))
    _save_saes(lab, layers, lambda layer: f"layer{layer}_coef{layers.settings['sparsity_coef']:g}")
    report.section("Part 5 (exercise 5): Early vs late layers", layers, "layer_comparison",
                   "One SAE per layer, same sparsity coefficient, held-out rows. mse is per dimension and grows with "
                   "the residual norm (activation_norm), so compare layers by fvu; see the glossary at the end.")
    report.figure(layers.plot(), "layer_comparison")
    report.table(layers.prompt_table, "layer_test_prompts",
                 "The original notebook's test prompts: active features and the strongest feature at the last token.")


def _cards_section(lab: _Lab, sae, density, correlation, test_acts) -> None:
    """Section 5: feature cards of the studied SAE, each also saved as cards/feature_N.html."""
    from saelab.features.cards import feature_card

    _stage(6, N_STAGES, f"feature cards ({N_CARDS})")
    lab.report.add("<h2>Part 6: Feature cards</h2>")
    lab.report.text(f"Features of the coef {lab.settings.coef:g} SAE at layer {lab.layer}: the top correlated pair, then typical "
                    "features (density nearest the median of the alive, not dense ones). Where do they fire, and "
                    "what do they push the next-token prediction towards? Each card is also saved on its own "
                    "as cards/feature_N.html.")
    for f in _pick_card_features(correlation, density, N_CARDS):
        card = feature_card(lab.model, sae, test_acts, f)
        card.save(lab.report.out / "cards" / f"feature_{f}.html")
        lab.report.add(card.html())


def _steering_sections(lab: _Lab, sae, density, test_acts) -> None:
    """Parts 7 and 8: steering and ablating the two features the lab's rule picks (`pick_features`)."""
    import pandas as pd

    from saelab.data import TEST_PROMPTS
    from saelab.features import feature_ablation, pick_features, steering_effect

    _stage(7, N_STAGES, "steering and ablation")
    features, rows, parts = pick_features(lab.model, sae, density, n=2, vocab=test_acts.token_ids), [], {7: [], 8: []}
    for f in features:
        steering = steering_effect(lab.model, sae, f, list(TEST_PROMPTS.values())[:3], alphas=[1, 2], seed=lab.seed,
                                   alpha_scale="max", activations=test_acts, n_new=8, vocab=test_acts.token_ids)
        ablation = feature_ablation(lab.model, sae, lab.test_texts[:lab.settings.ce_texts], f, progress=lab.progress)
        parts[7].append(steering.html())
        parts[8].append(ablation.html())
        rows.append({"feature": f, "delta_logprob_top_alpha1": steering.mean_delta(1.0),
                     "delta_logprob_top_alpha2": steering.mean_delta(2.0), "tokens_firing": int(ablation.firing.sum()),
                     "delta_loss_firing": ablation.mean_delta_firing, "delta_loss_silent": ablation.mean_delta_silent})
    rule = (f"Features {features} of the coef {lab.settings.coef:g} SAE, picked by the lab's rule (saelab.pick_features): "
            "active on 0.2% to 5% of held-out tokens, and of those the two whose decoder direction raises the logit of "
            "a token of the held-out text most. See the glossary for the units.")
    for part, title in ((7, "Part 7 (exercise 7): Steering, switching a feature on"),
                        (8, "Part 8 (exercise 8): Ablation, switching a feature off")):
        lab.report.add(f"<h2>{title}</h2>")
        lab.report.text(rule)
        lab.report.add("".join(parts[part]))
    lab.report.table(pd.DataFrame(rows), "steering_and_ablation", "Per feature: the mean change in log P(top promoted "
                     "tokens) when steered, and in next-token loss when ablated, where it fires and where not.")


def _write_manifest(folder: Path, lab: _Lab, seconds: float) -> None:
    """folder/manifest.json, written last: seed, model, device, settings, and every file with its size."""
    import json

    from saelab import __version__
    files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    manifest = {"saelab": __version__, "model": lab.model_name, "seed": lab.seed, "device": str(lab.device),
                "settings": lab.settings.as_dict(), "seconds": round(seconds, 1), "files": files}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


def run_lab(model_name: str, out: Path, seed: int = 0, device=None, max_tokens: int | None = None,
            progress: bool = True, settings: LabSettings | None = None, announce=None) -> Path:
    """Run the whole lab on `model_name` into the run folder `out`; returns `out/report.html`.

    The run is written into a fresh folder beside `out` and swapped in only when complete, with
    `manifest.json` (seed, model, settings, every file and its size) written last: an interrupted
    or failed run leaves `out` as it was (Ctrl-C during training: KeyboardInterrupt, no partial SAEs
    kept). A finished run replaces a previous run in `out` whole; `out` holding anything its manifest
    does not list (`not_in_manifest`) is refused with ValueError("path: ...") before any work. A second
    run into `out` while one runs: RuntimeError naming its pid (`files.writer_lock`). A full disk
    (checked against `estimate_bytes` once the model is loaded): `files.NoSpaceError`. Sizes and recipe:
    `settings`, else `training.lab_settings(model_name, max_tokens)` (max_tokens: training rows per layer),
    the same settings the notebook uses. `announce(model, device)`, if given, is called once the model
    is loaded, before the long work (the CLI's estimate).
    """
    from saelab.files import NO_SPACE_ERRNOS, NoSpaceError, no_space

    started = time.perf_counter()
    if settings is None:
        settings = lab_settings(model_name, max_tokens=max_tokens)
    elif not isinstance(settings, LabSettings):
        raise ValueError(f"settings: expected a saelab.training.lab_settings.LabSettings or None, got {describe(settings)}")
    elif max_tokens is not None:
        raise ValueError(f"max_tokens: expected None when settings are given (set settings.max_tokens instead), "
                         f"got {max_tokens}")
    out = Path(out)
    try:
        return _run(model_name, out, seed, device, settings, progress, announce, started)
    except OSError as e:   # a full disk found while writing: one message naming the folder
        if e.errno not in NO_SPACE_ERRNOS or isinstance(e, NoSpaceError):
            raise
        raise no_space(out.absolute().parent, f"the run {out}") from None


def _run(model_name, out: Path, seed, device, settings, progress, announce, started) -> Path:
    """run_lab's work, its arguments checked."""
    from saelab.files import atomic_folder, check_free_space
    from saelab.training.lab_settings import estimate_bytes

    with atomic_folder(out, replaceable=not_in_manifest, lock=True) as folder:
        lab = _setup(model_name, folder, seed, device, settings, progress, announce)
        check_free_space(out.absolute().parent, f"the run {out}", estimate_bytes(settings, lab.model.cfg))
        acts, test_acts = _activations_section(lab)
        sweep = _sweep_section(lab, acts, test_acts)
        sae = sweep.saes[settings.coef]
        correlation = _correlation_section(lab, sae, test_acts)
        _layers_section(lab)
        _cards_section(lab, sae, sweep.metrics[settings.coef].feature_density, correlation, test_acts)
        _steering_sections(lab, sae, sweep.metrics[settings.coef].feature_density, test_acts)
        _stage(8, N_STAGES, "writing the report")
        lab.report.glossary()
        lab.report.add(f"<p style='color:#777;font-size:12px;margin-top:32px'>Generated by <code>saelab run --model "
                       f"{html.escape(model_name)} --seed {seed}</code> in {time.perf_counter() - started:.0f}s.</p>")
        lab.report.write(f"Lab C.4: Feature extraction with SAEs: report ({model_name})")
        _write_manifest(folder, lab, time.perf_counter() - started)
    return out / "report.html"
