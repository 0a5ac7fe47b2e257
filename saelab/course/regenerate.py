"""Regenerate the solution notebooks' outputs: clean, machine-independent, and only when they changed.

`execute` runs each lab's solution notebook in a fresh Jupyter kernel started with progress bars
off (`SAELAB_PROGRESS=0`, `TQDM_DISABLE=1`), warnings ignored (`PYTHONWARNINGS=ignore` and a
`warnings.simplefilter` before the first cell), `PYTHONHASHSEED=0` and `SAELAB_PRECISION=float64`
(training and collection in float64: in float32 the CPU's kernels change the trained features). Its outputs are then cleaned
(`clean_outputs`): stderr streams and widget views are dropped, and the machine's paths (the
notebook's folder, the repository, the temporary folder, site-packages, the Python prefix, the
home folder) are replaced by short placeholders such as `<site-packages>`.

Numbers that a change of CPU can move are not noise to commit: `compare_outputs` compares two
executions with every decimal number rounded to `DIGITS` significant digits (integers, such as ids
and counts, compare exactly; a number written with a different count of digits is a change),
durations in seconds ignored, and images by their pixels (`IMAGE_TOLERANCE`: the fraction of
pixels that may differ).
`execute` keeps the committed file byte for byte when nothing changed beyond that; `check_outputs`
executes without writing and reports what a regeneration would change.
"""
from __future__ import annotations

import base64
import copy
import io
import os
import re
import signal
import site
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from saelab.course import notebooks
from saelab.files import atomic_write_text, make_temp_dir, remove_temp
from saelab.utils import ASSETS_DIR
from saelab.validate import check_bool, check_install_source

DIGITS = 3
IMAGE_TOLERANCE = 0.01
KERNEL_ENV = {"SAELAB_PROGRESS": "0", "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore", "PYTHONHASHSEED": "0",
              "SAELAB_PRECISION": "float64"}   # training's chaos amplifies float32's rounding (saelab.precision)
KERNEL_SETUP = "import warnings; warnings.simplefilter('ignore')"
#: The caller's variables a kernel does not inherit: MPLBACKEND (CI exports Agg) would replace Jupyter's
#: inline backend, so `plt.show()` would show nothing and figures would render at another size.
KERNEL_ENV_DROPPED = ("MPLBACKEND",)
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
#: Each kernel's connection file lives in `<temp dir>/saelab-kernel-<pid>-<hex>/`: removed when the run ends,
#: and by the next run when a kill -9 left it (`files.reclaim_stale`).
KERNEL_DIR_PREFIX = "saelab-kernel-"
_SECONDS = re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s?s(?![\w])")  # "11.0s", "3 s": wall-clock time
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?![\w.])")


def machine_paths(*folders: str | Path) -> list[tuple[str, str]]:
    """(path, placeholder) pairs for this machine's paths, longest first: `folders` (the first shown
    as `<notebook>`, the others as `<root>`), saelab, site-packages, the Python prefix, tmp and home."""
    pairs = [(Path(f), "<notebook>" if i == 0 else "<root>") for i, f in enumerate(folders)]
    pairs += [(ASSETS_DIR.parent, "<saelab>")]
    pairs += [(Path(p), "<site-packages>") for p in site.getsitepackages() + [site.getusersitepackages()]]
    pairs += [(Path(sys.prefix), "<python>"), (Path(sys.base_prefix), "<python>"),
              (Path(tempfile.gettempdir()), "<tmp>"), (Path.home(), "~")]
    out = {}
    for path, placeholder in pairs:
        for form in {str(path), str(path.resolve())}:
            if len(form) > 1:
                out.setdefault(form, placeholder)
    return sorted(out.items(), key=lambda item: -len(item[0]))


def _scrub(text: str, paths: list[tuple[str, str]]) -> str:
    """`text` with each path (a whole path component: `/tmp` but not `/tmpfoo`) as its placeholder."""
    for path, placeholder in paths:
        if path in text:
            text = re.sub(re.escape(path) + r"(?![\w.-])", lambda _: placeholder, text)
    return text


def clean_outputs(nb, paths: list[tuple[str, str]]):
    """`nb` (changed in place and returned) without stderr streams or widget outputs, paths replaced."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.outputs:
            if output.output_type == "stream" and output.name == "stderr":
                continue
            if output.output_type == "stream":
                output.text = _scrub(output.text, paths)
            elif output.output_type == "error":
                output.traceback = [_scrub(line, paths) for line in output.traceback]
                output.evalue = _scrub(output.evalue, paths)
            if WIDGET_MIME in output.get("data", {}):
                if "text/html" not in output.data:
                    continue  # a widget (e.g. a progress bar) and its text fallback: depends on the frontend
                del output.data[WIDGET_MIME]   # a widget with a static page (saelab.browse): the page stays
            if "data" in output:
                for mime, value in output.data.items():
                    if mime.startswith("text/") and isinstance(value, str):
                        output.data[mime] = _scrub(value, paths)
            kept.append(output)
        cell.outputs = kept
    return nb


def _rounded(match: re.Match) -> str:
    text = match.group(0)
    if not any(c in text for c in ".eE"):
        return text
    shape = re.sub(r"\d", "d", text)
    return f"{float(text):.{DIGITS - 1}e}|{shape}"


def normalise(text: str) -> str:
    """`text` with each decimal number as its value at DIGITS significant digits plus its written shape,
    and durations in seconds ("11.0s": wall-clock time, never the same twice) as `<seconds>`."""
    return _NUMBER.sub(_rounded, _SECONDS.sub("<seconds>", text))


def _images_match(a: str, b: str) -> bool:
    """Two base64 PNGs of the same size whose pixels differ in at most IMAGE_TOLERANCE of places."""
    if a == b:
        return True
    import numpy as np
    from PIL import Image

    x, y = (np.asarray(Image.open(io.BytesIO(base64.b64decode(v))).convert("RGBA")) for v in (a, b))
    return x.shape == y.shape and (x != y).any(axis=-1).mean() <= IMAGE_TOLERANCE


def _output_key(output) -> list:
    """What of an output must match: its kind, stream name, text (normalised) and mime types."""
    key = [output.output_type, output.get("name")]
    if output.output_type == "stream":
        key.append(normalise(output.text))
    elif output.output_type == "error":
        key += [output.ename, normalise(output.evalue)]
    for mime, value in sorted(output.get("data", {}).items()):
        text = value if isinstance(value, str) else str(value)
        key += [mime, None if mime.startswith("image/") else normalise(text)]
    return key


def _outputs_match(a, b) -> bool:
    if len(a) != len(b) or [_output_key(x) for x in a] != [_output_key(y) for y in b]:
        return False
    return all(_images_match(x.data[m], y.data[m]) for x, y in zip(a, b)
               for m in x.get("data", {}) if m.startswith("image/") and m != "image/svg+xml")


def _bare(nb) -> str:
    return notebooks.dumps(notebooks.without_outputs(nb))


def cell_names(nb) -> dict[int, str]:
    """Each code cell's name in messages, by its index in `nb.cells`: its number (1-based, counting every
    cell, as a notebook shows them), the heading of its part (the last markdown heading above it) and its id."""
    names, heading = {}, None
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            titles = [line.lstrip("#").strip() for line in cell.source.splitlines() if line.startswith("#")]
            heading = titles[-1] if titles else heading
        elif cell.cell_type == "code":
            names[index] = f"cell {index + 1}{f' ({heading})' if heading else ''} [id {cell.get('id')}]"
    return names


def compare_outputs(old, new) -> list[str]:
    """How `new`'s outputs differ from `old`'s beyond DIGITS significant digits (empty: they do not), each
    cell named by `cell_names`."""
    old_code = [c for c in old.cells if c.cell_type == "code"]
    new_code = [c for c in new.cells if c.cell_type == "code"]
    if [(c.get("id"), c.source) for c in old_code] != [(c.get("id"), c.source) for c in new_code]:
        return ["the code cells differ (sources or ids)"]
    names = list(cell_names(new).values())
    return [f"{name}: outputs changed beyond {DIGITS} significant digits ({_first_change(a.outputs, b.outputs)})"
            for name, a, b in zip(names, old_code, new_code) if not _outputs_match(a.outputs, b.outputs)]


def _text(output) -> str:
    return output.get("text") or output.get("data", {}).get("text/plain", "") or output.get("evalue", "")


def _first_change(old, new, width: int = 70) -> str:
    """The first line of text that changed (old -> new), else what else did: the outputs' count or a figure."""
    if len(old) != len(new):
        return f"{len(old)} outputs -> {len(new)}"
    for a, b in zip(old, new):
        for x, y in zip(_text(a).splitlines() + [""], _text(b).splitlines() + [""]):
            if normalise(x) != normalise(y):
                return " -> ".join(repr(part) for part in _around_change(x, y, width))
    return "a figure's pixels or an output's kind"


def _around_change(x: str, y: str, width: int) -> tuple[str, str]:
    """The parts of two lines around the first word that changed (at DIGITS significant digits)."""
    a, b = x.split(), y.split()
    i = next((k for k, (p, q) in enumerate(zip(a, b)) if normalise(p) != normalise(q)), min(len(a), len(b)))
    start = max(0, i - 3)
    return tuple(("... " if start else "") + " ".join(words[start:i + 4])[:width] for words in (a, b))


def _notebook_client(nb, **options):
    """An nbclient `NotebookClient` for `nb` that tells SIGTERM from SIGINT and stops quietly on either.

    While its kernel runs, nbclient takes SIGINT and SIGTERM alike: both shut the kernel down and end the
    execution (`.stopped`). This client takes SIGTERM back as soon as nbclient has set its handlers,
    notes it in `.terminated` and hands it on as SIGINT, so nbclient's own shutdown runs; `run_solution`
    then re-delivers SIGTERM once the process's handlers are back (the CLI exits 143, not 130). After a
    signal, the errors of nbclient's tasks that the shutdown cut short are not printed at exit.
    """
    import asyncio
    from nbclient import NotebookClient

    class Client(NotebookClient):
        terminated = False

        @property
        def stopped(self) -> bool:
            """Whether a signal shut the kernel down (nbclient then schedules its cleanup)."""
            return getattr(self, "_async_cleanup_kernel_future", None) is not None

        async def async_start_new_kernel(self, **kwargs):
            loop = asyncio.get_running_loop()
            if threading.current_thread() is threading.main_thread():   # nbclient sets no handler elsewhere
                loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
            loop.set_exception_handler(self._on_task_error)
            await super().async_start_new_kernel(**kwargs)

        def _on_sigterm(self) -> None:
            self.terminated = True
            signal.raise_signal(signal.SIGINT)

        def _on_task_error(self, loop, context: dict) -> None:
            if not self.stopped:
                loop.default_exception_handler(context)

    return Client(nb, **options)


def _signal_handlers() -> dict:
    """This process's SIGINT and SIGTERM handlers (none outside the main thread, which cannot set them)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}


def run_solution(root: Path, source: Path, model: str | None = None, timeout: int = 900, env=None,
                 install_source: str | None = None):
    """The solution notebook of `source`, executed in a fresh kernel in ROOT/solutions and cleaned.

    `env` adds variables to the kernel's environment (e.g. OMP_NUM_THREADS); `install_source` fills
    the install cell (see `notebooks.render`). A failing cell raises RuntimeError naming the notebook;
    SIGINT while it runs (nbclient then shuts the kernel down) raises KeyboardInterrupt; SIGTERM shuts
    the kernel down the same way, then is re-delivered to this process's own SIGTERM handler.
    """
    import nbformat
    from traitlets.config import Config
    from nbclient.exceptions import CellExecutionError

    path = notebooks.target(root, source, "solution")
    folder = path.parent.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    nb = notebooks.render(notebooks.read_source(source), "solution", install_source)
    inherited = {k: v for k, v in os.environ.items() if k not in KERNEL_ENV_DROPPED}
    kernel_env = {**inherited, **KERNEL_ENV, **({"SAELAB_MODEL": model} if model else {}), **(env or {})}
    connection = make_temp_dir(Path(tempfile.gettempdir()), KERNEL_DIR_PREFIX)
    client = _notebook_client(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                              extra_arguments=[f"--InteractiveShellApp.exec_lines={KERNEL_SETUP}"],
                              resources={"metadata": {"path": str(folder)}},
                              config=Config(KernelManager={"connection_file": str(connection / "kernel.json")}))
    handlers = _signal_handlers()   # nbclient replaces them while it runs and leaves the defaults behind
    try:
        client.execute(env=kernel_env, stderr=subprocess.DEVNULL)   # the kernel's own log: outputs come by message
    except CellExecutionError as e:
        summary = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise RuntimeError(f"{path}: a cell failed while executing ({summary})") from None
    except Exception:
        if client.stopped:
            raise KeyboardInterrupt from None   # nbclient shut the kernel down on SIGINT/SIGTERM; the rest is noise
        raise
    finally:
        remove_temp(connection)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        if client.terminated:
            signal.raise_signal(signal.SIGTERM)   # to this process's own handler, now that it is back
    nb.metadata = nbformat.from_dict(copy.deepcopy(notebooks.NOTEBOOK_METADATA))
    return clean_outputs(nb, machine_paths(folder, Path(root).resolve(), Path.cwd()))


def _resolve(root, sources, run: dict) -> tuple[Path, list[Path]]:
    """`notebooks.resolve`, and `run`'s install source checked before any kernel starts."""
    if run.get("install_source") is not None:
        check_install_source("install_source", run["install_source"])
    return notebooks.resolve(root, sources)


def execute(root=None, sources=None, rewrite: bool = False, **run) -> list[tuple[Path, str]]:
    """Re-run each source's solution notebook and write it, unless its outputs are unchanged (at 3
    significant digits, figures within IMAGE_TOLERANCE) and `rewrite` is False: `rewrite=True` writes
    the new outputs anyway, e.g. after a deliberate change to how a figure is drawn.

    `run`: keyword arguments of `run_solution` (model, timeout, env, install_source). Returns
    (path, what happened) pairs: "written" or "kept (outputs unchanged at 3 significant digits)".
    Nothing is written for a notebook whose execution fails (RuntimeError).
    """
    check_bool("rewrite", rewrite)
    root, sources = _resolve(root, sources, run)
    done = []
    for source in sources:
        nb = run_solution(root, source, **run)
        path = notebooks.target(root, source, "solution")
        old = notebooks.read_notebook(path) if path.is_file() else None
        same_cells = old is not None and _bare(old) == _bare(nb)
        if same_cells and not rewrite and not compare_outputs(old, nb):
            done.append((path, f"kept (outputs unchanged at {DIGITS} significant digits)"))
            continue
        atomic_write_text(path, notebooks.dumps(nb))
        done.append((path, "written"))
    return done


def check_outputs(root=None, sources=None, **run) -> list[str]:
    """Execute the solutions without writing; the changes a regeneration would commit (empty: none).

    `run`: keyword arguments of `run_solution` (model, timeout, env, install_source).
    """
    root, sources = _resolve(root, sources, run)
    problems = []
    for source in sources:
        path = notebooks.target(root, source, "solution")
        old = notebooks.read_notebook(path)
        if old is None:
            problems.append(f"{path}: missing or unreadable; run `saelab notebooks execute`")
            continue
        problems += [f"{path}: {d}" for d in compare_outputs(old, run_solution(root, source, **run))]
    return problems
