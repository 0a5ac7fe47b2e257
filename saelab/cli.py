"""The `saelab` command: `saelab run` (the whole lab, headless, to an HTML report) and
`saelab notebooks build|check|execute` (the lab's exercise and solution notebooks).

Heavy modules (torch, TransformerLens, nbformat) are imported inside the commands, so that
`saelab --help` answers at once. Usage errors print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEFAULT_OUT = "saelab_out"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `saelab run: error: ... (see saelab run --help)`, exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class UsageError(Exception):
    """A bad argument found after parsing (exit 2)."""


def _int_at_least(minimum: int, what: str):
    """An argparse type: an int >= minimum, else an error that says `what` was expected."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value
    return parse


_seed = _int_at_least(0, "a non-negative integer")
_positive = _int_at_least(1, "a positive integer")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="saelab",
        description="Lab C.4, feature extraction with sparse autoencoders (SAEs): run the whole lab "
                    "headless, or build, check and execute the lab's notebooks.",
        epilog="Models: 'tiny' is embedded and works offline; TransformerLens names such as 'gpt2-small' "
               "need internet access (or a filled Hugging Face cache). $SAELAB_MODEL sets the default.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"saelab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = commands.add_parser(
        "run", help="run the whole lab end to end and write an HTML report",
        description="Run the whole lab end to end: collect activations, the sparsity sweep (evaluated on "
                    "held-out texts), feature co-activation, early vs late layers and feature cards. Writes "
                    "DIR/report.html (opens offline; images embedded), the figures as PNG (DIR/figures), the "
                    "tables as CSV (DIR/tables) and the trained SAEs in SAELens format (DIR/saes).")
    run.add_argument("--model", default=None, metavar="NAME",
                     help="model to study: 'tiny' (embedded, offline) or a TransformerLens name such as "
                          "'gpt2-small' (default: $SAELAB_MODEL, else 'tiny')")
    run.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default: ./{DEFAULT_OUT})")
    run.add_argument("--seed", type=_seed, default=0, help="seed for the SAEs' weights and batch order (default: 0)")
    run.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: the best available)")
    run.add_argument("--max-tokens", type=_positive, default=None, metavar="N",
                     help="training tokens per layer (default: 30000 for tiny, 200000 otherwise)")
    run.set_defaults(handler=_cmd_run)

    nb = commands.add_parser(
        "notebooks", help="build, check or execute the lab's notebooks",
        description="Each lab has one source (saelab/assets/labs/*.py, percent format with "
                    "'# BEGIN SOLUTION' / '# END SOLUTION' markers) from which the exercise notebook "
                    "(ROOT/notebooks/) and the solution notebook (ROOT/solutions/) are built.")
    nb_commands = nb.add_subparsers(dest="nb_command", metavar="ACTION", parser_class=_Parser)
    common = _Parser(add_help=False)
    common.add_argument("--root", default=".", metavar="DIR",
                        help="folder holding notebooks/ and solutions/ (default: the current folder)")
    common.add_argument("--source", action="append", default=None, metavar="FILE",
                        help="a lab source to use (repeatable; default: the labs saelab ships)")
    build = nb_commands.add_parser(
        "build", parents=[common], help="write the exercise and solution notebooks from the lab sources",
        description="Write ROOT/notebooks/<lab>.ipynb (exercises: solutions replaced by stubs, no outputs) and "
                    "ROOT/solutions/<lab>.ipynb from each lab source. Unchanged notebooks are left alone (a "
                    "solution notebook keeps its outputs); a changed solution notebook is written without "
                    "outputs: run 'saelab notebooks execute' next.")
    build.set_defaults(handler=_cmd_build)
    check = nb_commands.add_parser(
        "check", parents=[common], help="fail if a committed notebook drifted from its source or leaks a solution",
        description="Exit 1 if a notebook differs from what 'build' would write (drift; solution notebooks are "
                    "compared without outputs and execution counts) or if an exercise notebook contains a line "
                    "of a solution (leak). Exit 0 when all is well.")
    check.set_defaults(handler=_cmd_check)
    execute = nb_commands.add_parser(
        "execute", parents=[common], help="re-run the solution notebooks to regenerate their outputs",
        description="Run each solution notebook in a fresh Jupyter kernel and write it back with its outputs "
                    "(progress bars off). Use --model gpt2-small (with internet) for the instructors' version.")
    execute.add_argument("--model", default=None, metavar="NAME",
                         help="model the notebooks load ($SAELAB_MODEL for the kernel; default: $SAELAB_MODEL, "
                              "else 'tiny')")
    execute.add_argument("--timeout", type=_positive, default=900, metavar="SECONDS",
                         help="per-cell time limit (default: 900)")
    execute.set_defaults(handler=_cmd_execute)
    nb.set_defaults(handler=lambda args: _missing_action(nb))
    parser.set_defaults(handler=lambda args: _missing_action(parser))
    return parser


def _missing_action(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def main(argv=None) -> int:
    """Entry point of the `saelab` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except UsageError as e:
        prog = "saelab " + args.command if getattr(args, "command", None) else "saelab"
        if getattr(args, "nb_command", None):
            prog += " " + args.nb_command
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("saelab: interrupted", file=sys.stderr)
        return 130


# ------------------------------------------------------------------------------------- notebooks

def _nb_paths(args) -> tuple[Path, list[Path] | None]:
    root = Path(args.root)
    if not root.is_dir():
        raise UsageError(f"--root: {root} is not a folder")
    sources = None
    if args.source:
        sources = [Path(s) for s in args.source]
        for s in sources:
            if not s.is_file():
                raise UsageError(f"--source: {s} does not exist")
    return root, sources


def _source_errors(fn, *args, **kwargs):
    from .notebooks import SourceError
    try:
        return fn(*args, **kwargs)
    except SourceError as e:
        raise UsageError(str(e)) from None


def _cmd_build(args) -> int:
    from . import notebooks
    root, sources = _nb_paths(args)
    written = _source_errors(notebooks.build, root, sources)
    for path in written:
        print(f"wrote {path}")
    import nbformat
    if any(p.parent.name == "solutions" and not any(c.get("outputs") for c in nbformat.read(p, as_version=4).cells)
           for p in written):
        print("solution notebooks have no outputs: run 'saelab notebooks execute' to generate them")
    if not written:
        print("notebooks are up to date")
    return 0


def _cmd_check(args) -> int:
    from . import notebooks
    root, sources = _nb_paths(args)
    problems = _source_errors(notebooks.check, root, sources)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"saelab notebooks check: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    n = len(sources) if sources else len(notebooks.lab_sources())
    print(f"saelab notebooks check: OK ({n} lab source(s): no drift, no leaks)")
    return 0


def _cmd_execute(args) -> int:
    from . import notebooks
    root, sources = _nb_paths(args)
    if args.model is not None and not args.model.strip():
        raise UsageError("--model: expected a model name such as 'tiny' or 'gpt2-small'")
    try:
        written = _source_errors(notebooks.execute, root, sources, model=args.model, timeout=args.timeout)
    except RuntimeError as e:
        print(f"saelab notebooks execute: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(f"executed {path}")
    return 0


# ------------------------------------------------------------------------------------------- run

def _check_out_dir(out: str) -> Path:
    """The output folder, created and proven writable, else UsageError."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out: {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".saelab-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"--out: cannot write to {path} ({e.strerror or type(e).__name__})") from None
    return path


#: Sizes of `saelab run` per model: training tokens per layer, held-out tokens, training steps,
#: texts for CE loss recovered. "tiny" finishes in a few minutes on 2 CPU cores.
RUN_SIZES = {"tiny": {"max_tokens": 30_000, "eval_tokens": 10_000, "steps": 600, "ce_texts": 20}}
RUN_SIZES_DEFAULT = {"max_tokens": 200_000, "eval_tokens": 50_000, "steps": 3000, "ce_texts": 64}
#: The sweep's coefficients: the seed's 1e-3 (too weak to change L0 at these activation scales, since
#: the penalty is the MEAN of |features|) up to 30; COEF is the SAE studied after the sweep.
SWEEP_COEFS = (1e-3, 1.0, 3.0, 10.0, 30.0)
COEF = 10.0
BATCH_SIZE, LR = 256, 5e-3
N_CARDS = 4


def _cmd_run(args) -> int:
    out = _check_out_dir(args.out)
    from .models import default_model_name
    name = args.model if args.model is not None else default_model_name()
    if not name.strip():
        raise UsageError("--model: expected a model name such as 'tiny' or 'gpt2-small'")
    start = time.perf_counter()
    try:
        report = run_lab(name, out, seed=args.seed, device=args.device, max_tokens=args.max_tokens)
    except ValueError as e:  # a bad model name or device, found by load_model / resolve_device
        message = str(e)
        for prefix, option in (("name: ", "--model: "), ("device: ", "--device: ")):
            if message.startswith(prefix):
                raise UsageError(option + message[len(prefix):]) from None
        raise
    except RuntimeError as e:
        print(f"saelab run: {e}", file=sys.stderr)
        return 1
    print(f"saelab run: finished in {time.perf_counter() - start:.0f}s; report: {report}")
    return 0


class _Report:
    """The HTML report and its files: tables as CSV, figures as PNG (embedded in the page as base64)."""

    def __init__(self, out: Path):
        self.out = out
        self.parts: list[str] = []
        (out / "figures").mkdir(exist_ok=True)
        (out / "tables").mkdir(exist_ok=True)

    def add(self, fragment: str) -> None:
        self.parts.append(fragment)

    def text(self, text: str, tag: str = "p") -> None:
        import html
        self.parts.append(f"<{tag}>{html.escape(text)}</{tag}>")

    def table(self, df, name: str, caption: str = "", index: bool = False) -> None:
        import html
        path = self.out / "tables" / f"{name}.csv"
        df.to_csv(path, index=index)
        shown = df.to_html(index=index, border=0, classes="data",
                           float_format=lambda v: f"{v:.4g}", na_rep="")
        self.parts.append(f"<figure>{shown}<figcaption>{html.escape(caption)} "
                          f"<a href='tables/{name}.csv'>{name}.csv</a></figcaption></figure>")

    def figure(self, fig, name: str, caption: str = "") -> None:
        import base64
        import html
        path = self.out / "figures" / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        self.parts.append(f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>"
                          f"<figcaption>{html.escape(caption)} <a href='figures/{name}.png'>{name}.png</a>"
                          f"</figcaption></figure>")

    def write(self, title: str) -> Path:
        import html
        path = self.out / "report.html"
        style = ("body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;max-width:1040px;"
                 "margin:24px auto;padding:0 16px;color:#222;line-height:1.45}"
                 "h1{font-size:26px}h2{font-size:20px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:36px}"
                 "table.data{border-collapse:collapse;font-size:13px;margin:6px 0}"
                 "table.data th,table.data td{padding:3px 10px;border-bottom:1px solid #eee;text-align:right}"
                 "table.data th{background:#f5f5f5}figure{margin:12px 0 20px}img{max-width:100%;height:auto}"
                 "figcaption{font-size:12px;color:#666}code{background:#f4f4f4;padding:1px 4px;border-radius:3px}"
                 ".note{background:#f7f9fc;border-left:3px solid #5b8def;padding:8px 12px}")
        page = (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{''.join(self.parts)}"
                "</body></html>\n")
        path.write_text(page, encoding="utf-8")
        return path


def _stage(n: int, total: int, text: str) -> None:
    print(f"[{n}/{total}] {text}", file=sys.stderr, flush=True)


def _bos_norms(model, texts, layer):
    """(DataFrame of row norms for BOS vs other rows, with the largest distance between two BOS rows;
    norms of BOS rows; norms of other rows)."""
    import pandas as pd

    from .activations import collect_activations
    acts = collect_activations(model, texts, [layer], exclude_bos=False)[layer]
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


def run_lab(model_name: str, out: Path, seed: int = 0, device=None, max_tokens: int | None = None,
            progress: bool = True) -> Path:
    """Run the whole lab on `model_name` and write `out/report.html` with figures, tables and SAEs."""
    import html

    import pandas as pd
    import torch

    from . import __version__
    from .activations import collect_activations
    from .data import load_texts
    from .experiments import compare_layers, feature_correlation, seed_sweep_layer, sparsity_sweep
    from .inspect import feature_card, top_activating_examples
    from .metrics import evaluate
    from .models import load_model, resolve_device

    started = time.perf_counter()
    sizes = dict(RUN_SIZES.get(model_name, RUN_SIZES_DEFAULT))
    if max_tokens is not None:
        sizes["max_tokens"] = max_tokens
    total = 7
    dev = resolve_device(device)
    model = load_model(model_name, device=dev)
    _stage(1, total, f"loaded model {model_name!r} on {dev}")
    train_texts, test_texts = load_texts("train"), load_texts("test")
    layer = seed_sweep_layer(model)
    report = _Report(out)
    saes_dir = out / "saes"
    report.add(f"<p class='note'>Model <code>{html.escape(model_name)}</code> ({model.cfg.n_layers} layers, "
               f"d_model {model.cfg.d_model}) on {dev}; seed {seed}; saelab {__version__}. Tied ReLU SAEs with "
               f"{4 * model.cfg.d_model} features (4 × d_model) on <code>resid_post</code>, trained on the shipped "
               f"training texts and evaluated on held-out test texts. Tables are in <code>tables/</code>, figures "
               f"in <code>figures/</code>, SAEs (SAELens format) in <code>saes/</code>.</p>")

    _stage(2, total, f"collecting activations at layer {layer} (up to {sizes['max_tokens']:,} training tokens)")
    bos_table, bos, other = _bos_norms(model, test_texts[:50], layer)
    acts = collect_activations(model, train_texts, [layer], max_tokens=sizes["max_tokens"], progress=progress)[layer]
    test_acts = collect_activations(model, test_texts, [layer], max_tokens=sizes["eval_tokens"],
                                    progress=progress)[layer]
    report.add("<h2>1. Activations</h2>")
    report.text(f"{len(acts):,} training rows and {len(test_acts):,} held-out rows of resid_post at layer {layer} "
                f"(the seed's layer 6 of 12 at the same relative depth). BOS rows are dropped: at position 0 the "
                f"model sees only the BOS token, so every text's BOS row is the same vector (largest distance "
                f"between two: {bos_table.max_distance_to_first_row[0]:.1e}), with {bos_table.mean_norm[0] / bos_table.mean_norm[1]:.2f}× "
                "the mean norm of the other rows here (on GPT-2 many times more). Kept in, they are repeated copies "
                "of one uninformative point that skew training and every metric.")
    report.table(bos_table, "bos_norms", "Residual norms of BOS rows and of the other rows (50 held-out texts).")
    report.figure(_bos_figure(bos, other, layer), "bos_norms")

    _stage(3, total, f"sparsity sweep: {len(SWEEP_COEFS)} SAEs, {sizes['steps']} steps each")
    sweep = sparsity_sweep(acts, coefs=SWEEP_COEFS, eval_activations=test_acts, steps=sizes["steps"], seed=seed,
                           lr=LR, batch_size=BATCH_SIZE, model=model, texts=test_texts[:sizes["ce_texts"]],
                           progress=progress, device=dev)
    for coef, sae in sweep.saes.items():
        sae.save(saes_dir / f"sweep_layer{layer}_coef{coef:g}")
    report.add("<h2>2. Sparsity sweep (exercise 1)</h2>")
    report.text(sweep.summary())
    report.table(sweep.table.drop(columns=["evaluated_on"]), "sparsity_sweep",
                 "One SAE per sparsity coefficient, measured on held-out rows. FVU = fraction of variance "
                 "unexplained; L0 = active features per token; CE loss recovered on held-out texts.")
    report.figure(sweep.plot(), "sparsity_tradeoff", "The trade-off: sparser codes (lower L0) reconstruct worse.")
    report.figure(sweep.plot_history(), "sparsity_training", "Training curves (values on each step's batch).")
    flatter = pd.DataFrame([{"coef": c, "fvu_training_rows": evaluate(s, acts).fvu,
                             "fvu_held_out": sweep.metrics[c].fvu} for c, s in sweep.saes.items()])
    report.table(flatter, "train_vs_heldout",
                 "The seed measured its SAEs on the rows they were trained on; held-out rows give the honest "
                 "number (with the seed's 5 prompts repeated 10 times the gap is far larger).")

    _stage(4, total, "feature co-activation")
    coef = COEF
    sae = sweep.saes[coef]
    correlation = feature_correlation(sae, test_acts, progress=progress)
    report.add("<h2>3. Feature co-activation (exercise 2)</h2>")
    report.text(f"The SAE with sparsity_coef {coef:g} (near the knee of the trade-off). {correlation.summary()}")
    if len(correlation.table):
        report.table(correlation.table, "top_correlated_pairs",
                     "Most correlated distinct pairs among features active on more than 1% of held-out tokens; "
                     "decoder_cosine = cosine similarity of their decoder directions.")
        report.figure(correlation.heatmap(), "correlation_heatmap")
        i, j = int(correlation.table.feature_i.iloc[0]), int(correlation.table.feature_j.iloc[0])
        report.add(f"<h3>Where the top pair fires: features {i} and {j}</h3>")
        for f in (i, j):
            report.add(top_activating_examples(sae, test_acts, f, k=6).html())

    _stage(5, total, "early vs late layers")
    layers = compare_layers(model, train_texts, max_tokens=sizes["max_tokens"], eval_texts=test_texts[:50],
                            sparsity_coef=COEF, steps=sizes["steps"], lr=LR, batch_size=BATCH_SIZE, seed=seed,
                            progress=progress, device=dev)
    for lay, layer_sae in layers.saes.items():
        layer_sae.save(saes_dir / f"layer{lay}_coef{layers.settings['sparsity_coef']:g}")
    report.add("<h2>4. Early vs late layers (exercise 3)</h2>")
    report.text(layers.summary())
    report.table(layers.table.drop(columns=["evaluated_on"]), "layer_comparison",
                 "Raw MSE grows with the residual norm, so compare layers by FVU.")
    report.figure(layers.plot(), "layer_comparison")
    report.table(layers.prompt_table, "layer_test_prompts",
                 "The seed's test prompts: active features and the strongest feature at the last token.")

    _stage(6, total, f"feature cards ({N_CARDS})")
    density = sweep.metrics[coef].feature_density
    report.add("<h2>5. Feature cards</h2>")
    report.text(f"Features of the coef {coef:g} SAE at layer {layer}: the top correlated pair, then typical "
                "features (density nearest the median of the alive, not dense ones). Where do they fire, and "
                "what do they push the next-token prediction towards?")
    for f in _pick_card_features(correlation, density, N_CARDS):
        card = feature_card(model, sae, test_acts, f)
        card.save(out / "cards" / f"feature_{f}.html")
        report.add(card.html())

    _stage(7, total, "writing the report")
    seconds = time.perf_counter() - started
    report.add(f"<p style='color:#777;font-size:12px;margin-top:32px'>Generated by <code>saelab run --model "
               f"{html.escape(model_name)} --seed {seed}</code> in {seconds:.0f}s.</p>")
    torch.set_grad_enabled(True)
    return report.write(f"Lab C.4: Feature extraction with SAEs: report ({model_name})")
