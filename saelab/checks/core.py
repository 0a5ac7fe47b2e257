"""What every check shares: the exercise numbers, `CheckFailed`, the pass line, calling a student's
function, comparing tensors, and showing a failure as its message alone.

A failing check raises `CheckFailed`. Where the student runs the cell, it shows as one block of text,
"❌ <check> (exercise N) failed: <what differs>. <hint>", without a stack trace:
  - in an IPython shell (any Jupyter kernel: JupyterLab, Notebook, VS Code, Colab, nbclient; or the
    IPython terminal) through `show_in_ipython`, registered with `set_custom_exc`: the cell still
    fails (the kernel replies `status: error`, so "Run all" stops there) and its error output is the
    message (the reply's traceback is the message too);
  - in plain Python (a script, the REPL) through `python_excepthook`, which prints the message to
    stderr; the process still exits with status 1.
"""
from __future__ import annotations

import sys
import textwrap

import torch

PASS, FAIL = "✅", "❌"
WIDTH = 100  # columns the shown message is wrapped to

# One numbering everywhere: Part N of the lab holds exercise N.
EXERCISES = {
    "check_sae": 1,            # Part 1: the tied SAE
    "check_activations": 2,    # Part 2: collecting activations without BOS rows
    "check_training_loop": 3,  # Part 3: the training loop of the sparsity sweep
    "check_top_pairs": 4,      # Part 4: features that fire together
    "check_fvu": 5,            # Part 5: the fraction of variance unexplained
    "check_steering": 7,       # Part 7: switching a feature on (steering)
    "check_ablation": 8,       # Part 8: switching a feature off (ablation)
}

NOT_IMPLEMENTED = ("is not implemented yet (it raises NotImplementedError). Replace the "
                   "`raise NotImplementedError()` line with your code, run that cell again, then this one.")


class CheckFailed(AssertionError):
    """A student's code does not match the reference; the message says what differs and why."""


def title(check: str) -> str:
    """'check_sae (exercise 1)'."""
    return f"{check} (exercise {EXERCISES[check]})"


def fail(check: str, message: str):
    """Raise CheckFailed("<check> (exercise N): <message>")."""
    raise CheckFailed(f"{title(check)}: {message}")


def passed(check: str, message: str) -> None:
    """Print the pass line "✅ <check> (exercise N) passed: <message>"."""
    print(f"{PASS} {title(check)} passed: {message}")


def failure_text(error: BaseException) -> str:
    """How a failed check shows: "❌ <check> (exercise N) failed: ...", wrapped to WIDTH columns."""
    text = str(error)
    head, sep, rest = text.partition(": ")
    text = f"{FAIL} {head} failed: {rest}" if sep and head.startswith("check_") else f"{FAIL} {text}"
    return "\n".join(textwrap.fill(p, WIDTH, break_on_hyphens=False) for p in text.split("\n"))


def call(check: str, what: str, fn, *args, hint: str = "", **kwargs):
    """fn(*args, **kwargs), turning a student's exception into a CheckFailed that says where."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        fail(check, f"{what} {NOT_IMPLEMENTED}")
    except CheckFailed:
        raise
    except Exception as e:  # the student's code failed: say how, without the stack trace
        first_line = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else ""
        detail = f"{type(e).__name__}: {first_line}" if first_line else type(e).__name__
        fail(check, f"{what} raised {detail}." + (f" Hint: {hint}" if hint else ""))


def close(a, b, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    """Same shape and allclose, compared in float64."""
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    return a.shape == b.shape and bool(torch.allclose(a, b, atol=atol, rtol=rtol))


def as_tensor(check: str, what: str, value, shape=None) -> torch.Tensor:
    """`value` detached on the CPU; CheckFailed if it is not a tensor (of `shape`, when given)."""
    if not isinstance(value, torch.Tensor):
        fail(check, f"{what} should be a torch tensor, got {type(value).__name__}.")
    if shape is not None and tuple(value.shape) != tuple(shape):
        fail(check, f"{what} should have shape {list(shape)}, got {list(value.shape)}.")
    return value.detach().cpu()


def show_in_ipython(shell, etype, value, tb, tb_offset=None):
    """IPython's custom-exception handler for CheckFailed (`shell.set_custom_exc`).

    IPython ignores the structured traceback a handler returns (it has since 0.13), so the handler
    shows the message itself, through the shell's own traceback display: in a kernel that is the
    cell's `error` output (ename CheckFailed, traceback = the message) and the execute reply's
    traceback; in the IPython terminal, printed. If that display is missing, it prints to stdout.
    """
    text = failure_text(value)
    try:
        shell._showtraceback(etype, value, [text])
    except Exception:  # a shell without IPython's display method: stdout still shows everywhere
        print(text)
    return [text]


def python_excepthook(previous):
    """A sys.excepthook that prints an uncaught CheckFailed as its message alone (to stderr) and
    hands every other exception to `previous`."""
    def hook(etype, value, tb):
        if isinstance(value, CheckFailed):
            print(failure_text(value), file=sys.stderr)
        else:
            previous(etype, value, tb)
    hook.saelab_checks = True
    return hook


def install_handlers() -> None:
    """Show CheckFailed as its message alone: in the running IPython shell if any, else in plain Python."""
    shell = None
    if "IPython" in sys.modules:
        try:
            from IPython import get_ipython
            shell = get_ipython()
        except ImportError:
            shell = None
    if shell is not None and hasattr(shell, "set_custom_exc"):
        shell.set_custom_exc((CheckFailed,), show_in_ipython)
    elif not getattr(sys.excepthook, "saelab_checks", False):
        sys.excepthook = python_excepthook(sys.excepthook)
