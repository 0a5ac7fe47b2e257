"""The `saelab` command: `saelab run` (the whole lab, headless, to an HTML report),
`saelab notebooks build|check|execute` (the lab's exercise and solution notebooks) and
`saelab release DIR` (a folder a course publishes: wheel, notebooks, solutions, nbgrader version).

Heavy modules (torch, TransformerLens, nbformat) are imported inside the commands, so that
`saelab --help` answers at once. Usage errors print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import os
import signal
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


#: --max-tokens' defaults as its help states them (tests/test_cli.py checks them against `lab_settings`,
#: which the CLI does not import for --help: it would load torch).
TINY_ROWS_SHOWN = "219,000"
OTHER_MAX_TOKENS = 200000

_seed = _int_at_least(0, "a non-negative integer")
_positive = _int_at_least(1, "a positive integer")


COMMAND_HELP = {  # name: (one line for the command list, the command's --help description)
    "run": ("run the whole lab end to end and write an HTML report",
            "Run the whole lab end to end: collect activations, the sparsity sweep (evaluated on "
            "held-out texts), feature co-activation, early vs late layers and feature cards. Writes "
            "DIR/report.html (opens offline; images embedded), the figures as PNG (DIR/figures), the "
            "tables as CSV (DIR/tables), the trained SAEs in SAELens format (DIR/saes), the feature cards "
            "(DIR/cards) and DIR/manifest.json (seed, model, settings, every file and its size). The run is "
            "written beside DIR and moved into place only when complete: an interrupted or failed run leaves DIR "
            "as it was (Ctrl-C: exit 130, SIGTERM: 143). A rerun replaces a previous run whole; anything in DIR its "
            "manifest.json does not list makes it refuse, deleting nothing; a second run into DIR is refused."),
    "notebooks": ("build, check or execute the lab's notebooks",
                  "Each lab has one source (saelab/assets/labs/*.py, Jupytext's percent format with "
                  "'# BEGIN SOLUTION' / '# END SOLUTION' markers) from which the exercise notebook "
                  "(ROOT/notebooks/) and the solution notebook (ROOT/solutions/) are built."),
    "build": ("write the exercise and solution notebooks from the lab sources",
              "Write ROOT/notebooks/<lab>.ipynb (exercises: solutions replaced by stubs, no outputs) and "
              "ROOT/solutions/<lab>.ipynb from each lab source. Unchanged notebooks are left alone (a "
              "solution notebook keeps its outputs); a changed solution notebook is written without "
              "outputs: run 'saelab notebooks execute' next."),
    "check": ("fail if a committed notebook drifted from its source or leaks a solution",
              "Exit 1 if a notebook differs from what 'build' would write (drift; solution notebooks are "
              "compared without outputs and execution counts) or if an exercise notebook contains a line "
              "of a solution (leak); with --outputs, also if executing the solutions would change their "
              "outputs beyond 3 significant digits. Exit 0 when all is well."),
    "execute": ("re-run the solution notebooks to regenerate their outputs",
                "Run each solution notebook in a fresh Jupyter kernel (progress bars off, warnings ignored) "
                "and write it back with clean outputs (no stderr, no widgets, no paths of this machine), "
                "unless they are unchanged at 3 significant digits: then the file is kept byte for byte. "
                "Use --model gpt2-small (with internet) for the instructors' version."),
    "release": ("write a folder a course can publish: wheel, notebooks, solutions, manifest",
                "Build saelab's sdist and wheel, write the exercise and solution notebooks with the install "
                "source filled in, execute and check the solutions, and (with --nbgrader) the nbgrader "
                "version, into DIR with manifest.json (version, install source, sha256 of every file). DIR "
                "must not exist or be empty; it is written beside itself and renamed at the end; a second "
                "release into DIR is refused while one runs."),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="saelab",
        description="Lab C.4, feature extraction with sparse autoencoders (SAEs): run the whole lab "
                    "headless, build, check and execute the lab's notebooks, or release them for a course.",
        epilog="Models: 'tiny' is embedded and works offline; TransformerLens names such as 'gpt2-small' "
               "need internet access (or a filled Hugging Face cache). $SAELAB_MODEL sets the default.")
    from saelab import __version__
    parser.add_argument("--version", action="version", version=f"saelab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_run(commands)
    _add_notebooks(commands)
    _add_release(commands)
    parser.set_defaults(handler=lambda args: _missing_action(parser, "a command", commands.choices), parser=parser)
    return parser


def _command(commands, name: str) -> argparse.ArgumentParser:
    """The subcommand `name`, with its one-line help and description from COMMAND_HELP."""
    summary, text = COMMAND_HELP[name]
    command = commands.add_parser(name, help=summary, description=text)
    command.set_defaults(parser=command)  # the innermost command parsed names itself in errors
    return command


def _add_run(commands) -> None:
    run = _command(commands, "run")
    _add_model(run)
    run.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default: ./{DEFAULT_OUT})")
    run.add_argument("--seed", type=_seed, default=0, help="seed for the SAEs' weights and batch order (default: 0)")
    run.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: the best available)")
    run.add_argument("--max-tokens", type=_positive, default=None, metavar="N",
                     help=f"training tokens per layer, at least {MIN_MAX_TOKENS} (default: every row the shipped "
                          f"training texts give for tiny, about {TINY_ROWS_SHOWN}; {OTHER_MAX_TOKENS} for other models)")
    run.add_argument("--force", action="store_true",
                     help=f"run even with --max-tokens below {MIN_MAX_TOKENS} (numbers then mean little)")
    run.set_defaults(handler=_cmd_run)


def _add_model(parser, timeout: bool = False) -> None:
    """--model NAME (and with `timeout`, --timeout SECONDS for executing notebooks)."""
    parser.add_argument("--model", default=None, metavar="NAME",
                        help="model to study: 'tiny' (embedded, offline) or a TransformerLens name such as "
                             "'gpt2-small' (default: $SAELAB_MODEL, else 'tiny')")
    if timeout:
        parser.add_argument("--timeout", type=_positive, default=900, metavar="SECONDS",
                            help="per-cell time limit when executing notebooks (default: 900)")


def _add_sources(parser, root: bool = True) -> None:
    """--root DIR (optional), --source FILE (repeatable) and --install-source URL_OR_WHEEL."""
    if root:
        parser.add_argument("--root", default=".", metavar="DIR",
                            help="folder holding notebooks/ and solutions/ (default: the current folder)")
    parser.add_argument("--source", action="append", default=None, metavar="FILE",
                        help="a lab source to use (repeatable; default: the labs saelab ships)")
    parser.add_argument("--install-source", default=None, metavar="URL_OR_WHEEL",
                        help="what the notebooks' install cell installs saelab from: a wheel (path or URL) "
                             "or a git URL (written into its `INSTALL_SOURCE = None` line)")


def _add_notebooks(commands) -> None:
    nb = _command(commands, "notebooks")
    actions = nb.add_subparsers(dest="nb_command", metavar="ACTION", parser_class=_Parser)
    for name, handler in (("build", _cmd_build), ("check", _cmd_check), ("execute", _cmd_execute)):
        action = _command(actions, name)
        _add_sources(action)
        action.set_defaults(handler=handler)
        if name == "build":
            action.add_argument("--nbgrader", default=None, metavar="DIR",
                                help="also write the nbgrader source version into the course folder DIR "
                                     "(DIR/source/<lab>/<lab>.ipynb)")
        if name == "execute":
            action.add_argument("--rewrite", action="store_true",
                                help="write the new outputs even when they match the committed ones at 3 "
                                     "significant digits (e.g. after changing how a figure is drawn)")
        if name == "check":
            action.add_argument("--outputs", action="store_true",
                                help="also execute the solutions and fail if their outputs would change beyond "
                                     "3 significant digits")
        if name != "build":
            _add_model(action, timeout=True)
    nb.set_defaults(handler=lambda args: _missing_action(nb, "an action", actions.choices))


def _add_release(commands) -> None:
    release = _command(commands, "release")
    release.add_argument("dir", metavar="DIR", help="the folder to write")
    _add_sources(release, root=False)
    release.add_argument("--nbgrader", action="store_true", help="also write DIR/nbgrader/, an nbgrader course folder")
    release.add_argument("--no-wheel", action="store_true", help="do not build the wheel (e.g. for a git URL)")
    _add_model(release, timeout=True)
    release.set_defaults(handler=_cmd_release)


def _missing_action(parser: argparse.ArgumentParser, what: str, choices) -> int:
    """No command (or action) given: the usage, then one error line naming the choices; exit 2."""
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: expected {what}: one of {', '.join(choices)} (see '{parser.prog} --help')",
          file=sys.stderr)
    return 2


_SIGNALS: list[int] = []   # SIGTERMs received while a command ran


def _on_sigterm(signum, _frame) -> None:
    """SIGTERM behaves as Ctrl-C (each writer's temp is removed on the way out), then exits 143."""
    _SIGNALS.append(signum)
    raise KeyboardInterrupt


def _prog(args) -> str:
    """The command as typed: "saelab run", "saelab notebooks build"..."""
    prog = "saelab " + args.command if getattr(args, "command", None) else "saelab"
    return prog + " " + args.nb_command if getattr(args, "nb_command", None) else prog


def main(argv=None) -> int:
    """Entry point of the `saelab` command; returns the exit status (Ctrl-C: 130, SIGTERM: 143)."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported by the command they follow (`saelab run: error: ...`), not by `saelab`
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    _SIGNALS.clear()
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return args.handler(args)
    except UsageError as e:
        print(f"{_prog(args)}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:   # a failed cell, a folder it may not write (files.WriteError), a full disk...
        print(f"{_prog(args)}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        signum = _SIGNALS[-1] if _SIGNALS else signal.SIGINT
        print(f"saelab: {'terminated' if signum == signal.SIGTERM else 'interrupted'}", file=sys.stderr)
        return 128 + signum
    finally:
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------------------------- notebooks

def _nb_paths(args) -> tuple[Path, list[Path] | None]:
    """(--root, --source files or None for the shipped labs), each checked."""
    root = Path(args.root)
    if not root.is_dir():
        raise UsageError(f"--root: {root} is not a folder")
    return root, _sources(args)


def _sources(args) -> list[Path] | None:
    if not args.source:
        return None
    sources = [Path(s) for s in args.source]
    for s in sources:
        if not s.is_file():
            raise UsageError(f"--source: {s} does not exist")
    return sources


def _in_cli_terms(message: str, options: dict[str, str]) -> str | None:
    """`message` with its leading "argument: " named as the CLI option, or None when none matches."""
    for prefix, option in options.items():
        if message.startswith(prefix):
            return option + message[len(prefix):]
    return None


def _nb_errors(fn, *args, **kwargs):
    """Call a notebooks function; a bad source, install source or folder becomes a one-line UsageError."""
    from saelab.course.notebooks import SourceError
    try:
        return fn(*args, **kwargs)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        message = _in_cli_terms(str(e), {"install_source: ": "--install-source: ", "folder: ": "DIR: ",
                                           "lab source ": "--source "})
        if message is None and not isinstance(e, (SourceError, FileExistsError, FileNotFoundError)):
            raise
        raise UsageError(message or str(e)) from None


def _run_options(args) -> dict:
    """The kernel options of `course.regenerate.run_solution` from --model, --timeout and --install-source."""
    if args.model is not None and not args.model.strip():
        raise UsageError("--model: expected a model name such as 'tiny' or 'gpt2-small'")
    return {"model": args.model, "timeout": args.timeout, "install_source": args.install_source}


def _cmd_build(args) -> int:
    from saelab.course import grading, notebooks
    root, sources = _nb_paths(args)
    written = _nb_errors(notebooks.build, root, sources, install_source=args.install_source)
    if args.nbgrader is not None:
        written += _nb_errors(grading.build_nbgrader, args.nbgrader, sources, install_source=args.install_source)
    for path in written:
        print(f"wrote {path}")
    if any(p.parent.name == "solutions" and not any(c.get("outputs") for c in notebooks.read_notebook(p).cells)
           for p in written):
        print("solution notebooks have no outputs: run 'saelab notebooks execute' to generate them")
    if not written:
        print("notebooks are up to date")
    return 0


def _cmd_check(args) -> int:
    from saelab.course import notebooks, regenerate
    root, sources = _nb_paths(args)
    problems = _nb_errors(notebooks.check, root, sources, install_source=args.install_source)
    if args.outputs and not problems:
        try:
            problems = _nb_errors(regenerate.check_outputs, root, sources, **_run_options(args))
        except RuntimeError as e:
            problems = [str(e)]
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"saelab notebooks check: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    n = len(sources) if sources else len(notebooks.lab_sources())
    outputs = "; outputs unchanged at 3 significant digits" if args.outputs else ""
    print(f"saelab notebooks check: OK ({n} lab source(s): no drift, no leaks{outputs})")
    return 0


def _cmd_execute(args) -> int:
    from saelab.course import regenerate
    root, sources = _nb_paths(args)
    done = _nb_errors(regenerate.execute, root, sources, rewrite=args.rewrite, **_run_options(args))
    for path, what in done:
        print(f"{path}: {what}")
    return 0


def _cmd_release(args) -> int:
    from saelab.course.release import release
    if args.install_source is None:
        raise UsageError("--install-source: required: the wheel (path or URL) or git URL students install from")
    sources = _sources(args)
    folder = _nb_errors(release, args.dir, args.install_source, sources, nbgrader=args.nbgrader,
                        wheel=not args.no_wheel, **{k: v for k, v in _run_options(args).items()
                                                   if k != "install_source"})
    print(f"saelab release: wrote {folder} (see {folder / 'manifest.json'})")
    return 0


# ------------------------------------------------------------------------------------------- run

#: Fewer training tokens than this give SAEs that have not learned anything (explained variance
#: can be far below 0), so `saelab run` refuses them unless --force is given.
MIN_MAX_TOKENS = 2000


def _check_out_dir(out: str) -> Path:
    """The output folder (not created: the run creates it when complete), else UsageError."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out: {path} exists and is not a folder")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        reason = "is not a folder" if not parent.is_dir() else "is not writable"
        raise UsageError(f"--out: cannot write to {path} ({parent} {reason})")
    return path


def _device_terms(message: str) -> str:
    """resolve_device's message in a shell user's terms: no `None`, `--device` named."""
    return (message.replace("device: ", "--device: ", 1).replace(" or None", " (or leave --device out)")
            .replace("use 'cpu' (or leave --device out)", "use --device cpu, or leave --device out"))


def estimate_run_seconds(model_name: str, max_tokens, model_cfg, device) -> float:
    """Seconds `saelab run` is expected to take: `training.lab_settings.estimate_seconds` of the very settings the
    run uses (`lab_settings(model_name, max_tokens)`)."""
    from saelab.training.lab_settings import estimate_seconds, lab_settings
    return estimate_seconds(lab_settings(model_name, max_tokens=max_tokens), model_cfg, device)


def _announcer(model_name: str, max_tokens):
    """The run's `announce(model, device)`: a time estimate when the run cannot be short (not tiny, on CPU)."""
    def announce(model, device) -> None:
        if model_name == "tiny" or getattr(device, "type", str(device)) != "cpu":
            return
        seconds = estimate_run_seconds(model_name, max_tokens, model.cfg, device)
        print(f"saelab run: {model_name} on CPU: expect about {max(1, round(seconds / 60))} min "
              f"(fewer with a smaller --max-tokens, far fewer on a GPU)", file=sys.stderr, flush=True)
    return announce


def _cmd_run(args) -> int:
    out = _check_out_dir(args.out)
    from saelab.models import default_model_name
    name = args.model if args.model is not None else default_model_name()
    if not name.strip():
        raise UsageError("--model: expected a model name such as 'tiny' or 'gpt2-small'")
    if args.max_tokens is not None and args.max_tokens < MIN_MAX_TOKENS and not args.force:
        raise UsageError(f"--max-tokens: expected at least {MIN_MAX_TOKENS}, got {args.max_tokens}: fewer training "
                         f"tokens give SAEs that learned nothing (explained variance below 0); add --force to run "
                         f"anyway")
    start = time.perf_counter()
    from saelab.models import ModelUnavailableError
    try:
        from saelab.report import run_lab
        report = run_lab(name, out, seed=args.seed, device=args.device, max_tokens=args.max_tokens,
                         announce=_announcer(name, args.max_tokens))
    except ModelUnavailableError as e:
        print(f"saelab run: could not load --model {e.model_name}: {e.reason}. Use --model {e.offline_choice} "
              f"(embedded, works offline), or connect to the internet once so that {e.model_name} is "
              f"downloaded into the Hugging Face cache.", file=sys.stderr)
        return 1
    except ValueError as e:  # a bad model name, device or output folder, found before any work
        text = str(e)
        message = _device_terms(text) if text.startswith("device: ") else _in_cli_terms(
            text, {"name: ": "--model: ", "path: ": "--out: "})
        if message is None:
            raise
        raise UsageError(message.replace("which this save would delete; save into a new folder",
                                         "which a rerun would delete; use another --out")) from None
    print(f"saelab run: finished in {time.perf_counter() - start:.0f}s; report: {report} "
          f"(cards in {out / 'cards'}, files listed in {out / 'manifest.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
