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


def _cmd_run(args) -> int:
    out = _check_out_dir(args.out)
    from .models import default_model_name
    name = args.model if args.model is not None else default_model_name()
    if not name.strip():
        raise UsageError("--model: expected a model name such as 'tiny' or 'gpt2-small'")
    start = time.perf_counter()
    try:
        from .report import run_lab
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


