"""Every argument check of saelab, one function per idea, each taking the argument's name.

A failed check raises ValueError with the message "name: expected X, got Y" (Y from
`utils.describe`), so a student sees which argument was wrong, what was expected and what came.
Each check returns the value in the form the caller uses (an int, a tuple of layers, ...).

This module sits just above `utils` in the import order: it knows saelab's containers only by
their shape (an `Activations` is anything with `layers`, `iter_rows` and a row width), never by
importing them.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence

import numpy as np
import torch

from saelab.utils import describe

#: Short hook names tried against the model when listing what `hook` may be (any name that
#: `get_act_name(hook, layer)` maps to a hook of the model with a per-token activation works).
KNOWN_HOOKS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_in", "attn_in",
               "mlp_pre", "mlp_post", "q", "k", "v", "z", "result", "q_input", "k_input", "v_input")
NOT_PER_TOKEN = ("hook_pattern", "hook_attn_scores")
#: What a TransformerLens HookedTransformer offers that collecting activations needs.
MODEL_NEEDS = ("cfg", "hook_dict", "run_with_hooks", "to_tokens", "tokenizer")


def _is_int(value) -> bool:
    """A Python or numpy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value) -> bool:
    """A Python or numpy real number (int or float), not a bool."""
    return (isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, (bool, np.bool_)))


# ----------------------------------------------------------------------------- scalars

def check_int(name: str, value, minimum: int | None = None, allow_none: bool = False) -> int | None:
    """`value` as an int >= minimum (numpy integers accepted, bool refused), else ValueError naming `name`."""
    if value is None and allow_none:
        return None
    if not _is_int(value) or (minimum is not None and value < minimum):
        need = f"an int >= {minimum}" if minimum is not None else "an int"
        raise ValueError(f"{name}: expected {need}{' or None' if allow_none else ''}, got {describe(value)}")
    return int(value)


def check_float(name: str, value, minimum: float | None = None, strict: bool = False) -> float:
    """`value` as a finite float (>= minimum, or > minimum when strict; numpy scalars accepted, bool
    refused), else ValueError naming `name`."""
    ok = _is_number(value) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum}"
        raise ValueError(f"{name}: expected a finite number{bound}, got {describe(value)}")
    return float(value)


def check_fraction(name: str, value, open_low: bool = False, open_high: bool = False) -> float:
    """`value` as a float in [0, 1] ((0 when open_low, 1) when open_high), else ValueError naming `name`."""
    ok = _is_number(value) and math.isfinite(value)
    if ok:
        ok = (value > 0 if open_low else value >= 0) and (value < 1 if open_high else value <= 1)
    if not ok:
        interval = f"{'(' if open_low else '['}0, 1{')' if open_high else ']'}"
        raise ValueError(f"{name}: expected a number in {interval}, got {describe(value)}")
    return float(value)


def check_bool(name: str, value) -> bool:
    """`value` as a bool (True/False or a numpy bool), else ValueError naming `name`."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}: expected True or False, got {describe(value)}")
    return bool(value)


def check_coefs(name: str, coefs) -> tuple[float, ...]:
    """Sparsity coefficients as a tuple of distinct positive finite floats. Accepts one number (Python
    or numpy), a list or tuple of numbers, or a 1-D numpy array."""
    if _is_number(coefs) or (isinstance(coefs, np.ndarray) and coefs.ndim == 0):
        coefs = (coefs.item() if isinstance(coefs, np.ndarray) else coefs,)
    elif isinstance(coefs, np.ndarray) and coefs.ndim == 1:
        coefs = coefs.tolist()
    if not isinstance(coefs, (list, tuple)) or not coefs:
        raise ValueError(f"{name}: expected a non-empty list of positive sparsity coefficients such as "
                         f"(1e-2, 1e-3, 1e-4), got {describe(coefs)}")
    out = tuple(check_float(f"{name}[{i}]", c, minimum=0.0, strict=True) for i, c in enumerate(coefs))
    if len(set(out)) != len(out):
        raise ValueError(f"{name}: expected distinct coefficients, got {list(out)}")
    return out


def _as_int(value):
    """A one-element integer tensor as an int; anything else as it is."""
    if (isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point()
            and not value.is_complex() and value.dtype != torch.bool):
        return int(value)
    return value


def check_feature(name: str, feature, n_features: int) -> int:
    """A feature id as an int in [0, n_features) (numpy and 0-d integer tensors accepted)."""
    feature = _as_int(feature)
    if not _is_int(feature) or not 0 <= feature < n_features:
        raise ValueError(f"{name}: expected an int in [0, {n_features - 1}] (the SAE has {n_features} "
                         f"features), got {describe(feature)}")
    return int(feature)


def check_row(name: str, row, n: int) -> int:
    """A row number as an int in [0, n); negative ints count from the end (numpy and one-element
    integer tensors accepted)."""
    row = _as_int(row)
    if not _is_int(row) or not -n <= row < n:
        raise ValueError(f"{name}: expected an int in [0, {n}), got {describe(row)}")
    return int(row) % n


def check_choice(name: str, value, choices: Sequence, allow_none: bool = False):
    """`value` if it is one of `choices` (or None when allow_none), else ValueError listing them."""
    if (value is None and allow_none) or any(value == c and type(value) is type(c) for c in choices):
        return value
    also = " or None" if allow_none else ""
    raise ValueError(f"{name}: expected one of {list(choices)}{also}, got {describe(value)}")


def check_path(name: str, value, allow_none: bool = False):
    """`value` if it is a path (a str or os.PathLike; or None when allow_none), else ValueError naming `name`."""
    if (value is None and allow_none) or isinstance(value, (str, os.PathLike)):
        return value
    raise ValueError(f"{name}: expected a path{' or None' if allow_none else ''}, got {describe(value)}")


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_URL_SCHEMES = {"http", "https", "file", "git+https", "git+http", "git+ssh", "git+file"}


def check_file_name(name: str, value: str) -> str:
    """`value` if it is a plain file name (letters, digits, `_`, `.`, `-`; not starting with `.`), so that
    a path built from it stays in its folder (`...py` would give `..`), else ValueError."""
    if not isinstance(value, str) or not _PLAIN_NAME.fullmatch(value):
        raise ValueError(f"{name}: expected a plain file name (letters, digits, '_', '.', '-', not starting "
                         f"with '.'), got {value!r}")
    return value


def check_install_source(name: str, value) -> str:
    """What a notebook's install cell may hand pip: a URL (http(s), file or git+...: it parses, no
    whitespace) or a wheel path; a wheel's file name must parse as a wheel's, an absolute path must be
    an existing file (a relative one is read from the notebook's folder when the cell runs); nothing
    pip would read as an option (a leading `-`). Else ValueError naming `name`."""
    from urllib.parse import urlsplit

    if not isinstance(value, str) or not value or any(c.isspace() for c in value) or value.startswith("-"):
        raise ValueError(f"{name}: expected a wheel path or URL with no whitespace and no leading '-', "
                         f"got {describe(value)}")
    url = urlsplit(value) if "://" in value else None
    if url is not None and (url.scheme not in _URL_SCHEMES or not (url.netloc or url.scheme.endswith("file"))):
        raise ValueError(f"{name}: expected a URL with a host and a scheme among {sorted(_URL_SCHEMES)}, got {value!r}")
    file_name = (url.path if url else value).rstrip("/").rsplit("/", 1)[-1]
    if url is None or file_name.endswith(".whl"):
        from packaging.utils import InvalidWheelFilename, parse_wheel_filename
        try:
            parse_wheel_filename(file_name)
        except InvalidWheelFilename as e:
            raise ValueError(f"{name}: expected a wheel (name-version-python-abi-platform.whl) or a URL, "
                             f"got {value!r} ({e})") from None
    if url is None and os.path.isabs(value) and not os.path.isfile(value):
        raise ValueError(f"{name}: the wheel {value} does not exist")
    return value


# ----------------------------------------------------------------------------- texts and layers

def check_texts(name: str, texts, allow_str: bool = False) -> list[str]:
    """A non-empty list of strings (any iterable of str). A single str is refused with a hint, or,
    with allow_str=True, taken as a list of one text."""
    if isinstance(texts, str) and allow_str:
        return [texts]
    if isinstance(texts, (str, bytes)):
        raise ValueError(f"{name}: expected a list of strings, got a single {type(texts).__name__}; "
                         f"wrap it in a list: [text]")
    try:
        texts = list(texts)
    except TypeError:
        raise ValueError(f"{name}: expected a list of strings, got {describe(texts)}") from None
    if not texts:
        raise ValueError(f"{name}: expected a non-empty list of strings, got an empty one")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"{name}[{i}]: expected a str, got {describe(text)}")
    return texts


def check_layer(name: str, layer, n_layers: int) -> int:
    """One layer as an int in [0, n_layers); negative ints count from the last layer."""
    if not _is_int(layer):
        raise ValueError(f"{name}: expected an int (a layer number in [0, {n_layers - 1}]), got {describe(layer)}")
    if not -n_layers <= layer < n_layers:
        raise ValueError(f"{name}: expected an int in [0, {n_layers - 1}] (the model has n_layers={n_layers}; "
                         f"negative ints count from the last), got {describe(layer)}")
    return int(layer) % n_layers


def check_layers(name: str, layers, n_layers: int) -> tuple[int, ...]:
    """One layer or a non-empty list of distinct layers as a tuple of ints in [0, n_layers), in the order
    given (negative ints count from the last). A non-int item (e.g. 1.0) or a layer given twice (1 and
    1, or 3 and -1 of 4 layers) is a ValueError naming it."""
    if _is_int(layers):
        layers = [layers]
    if not isinstance(layers, (Sequence, np.ndarray)) or isinstance(layers, (str, bytes)):
        raise ValueError(f"{name}: expected an int or a list of ints in [0, {n_layers - 1}] (negative ints "
                         f"count from the last layer), got {describe(layers)}")
    if len(layers) == 0:
        raise ValueError(f"{name}: expected at least one layer in [0, {n_layers - 1}], got an empty list")
    resolved: list[int] = []
    for i, layer in enumerate(layers):
        layer = check_layer(f"{name}[{i}]", layer, n_layers)
        if layer in resolved:
            raise ValueError(f"{name}: expected distinct layers, got layer {layer} twice ({list(layers)})")
        resolved.append(layer)
    return tuple(resolved)


# ----------------------------------------------------------------------------- models and hooks

def check_context_length(name: str, context_length, n_ctx: int) -> int:
    """Tokens per forward pass as an int in [2, n_ctx] (the model's context); None gives n_ctx."""
    if context_length is None:
        return n_ctx
    context_length = check_int(name, context_length, minimum=2)
    if context_length > n_ctx:
        raise ValueError(f"{name}: expected at most the model's n_ctx ({n_ctx}), got {context_length}")
    return context_length


def check_model(name: str, model, needs: Sequence[str] = MODEL_NEEDS):
    """`model` if it has every attribute in `needs` (a TransformerLens HookedTransformer has them all);
    "tokenizer" in needs also requires the tokenizer not to be None."""
    missing = [a for a in needs if not hasattr(model, a)]
    if missing:
        raise ValueError(f"{name}: expected a TransformerLens HookedTransformer (e.g. saelab.load_model('tiny')), "
                         f"got {describe(model)}")
    if "tokenizer" in needs and model.tokenizer is None:
        raise ValueError(f"{name}: expected a model with a tokenizer (saelab.load_model gives one), got one "
                         f"without, so texts cannot be tokenized")
    return model


def check_hook(name: str, hook, model, layers: Sequence[int]) -> dict[int, str]:
    """The full hook name of short hook `hook` (e.g. "resid_post") at each layer, as
    {layer: "blocks.{layer}.hook_resid_post"}; the hook must give one row per token."""
    from transformer_lens.utilities import get_act_name

    available = [h for h in KNOWN_HOOKS if get_act_name(h, 0) in model.hook_dict]
    if not isinstance(hook, str) or not hook:
        raise ValueError(f"{name}: expected a hook name such as 'resid_post' (one of {available}), "
                         f"got {describe(hook)}")
    names = {}
    for layer in layers:
        try:
            full = get_act_name(hook, layer)
        except Exception:  # get_act_name raises assorted errors for odd names
            full = None
        if full is None or full not in model.hook_dict or not full.startswith(f"blocks.{layer}."):
            raise ValueError(f"{name}: expected a hook name such as {available} (a per-layer hook of this "
                             f"model), got {hook!r}, which is not a hook of layer {layer}")
        if full.endswith(NOT_PER_TOKEN):
            raise ValueError(f"{name}: expected a per-token hook such as {available}, got {hook!r} ({full}), which "
                             f"holds attention between positions")
        names[layer] = full
    return names


# ----------------------------------------------------------------------------- rows

def check_sae_input(name: str, x, width: int, what: str, like: torch.Tensor) -> torch.Tensor:
    """`x` if it is a finite float tensor [..., width] with `like`'s dtype and device (an SAE's input:
    `like` is its weight), else ValueError saying which of these it is not; `what` names the width."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"{name}: expected a float tensor [..., {width}], got {describe(x)}")
    if x.dim() == 0 or x.shape[-1] != width:
        raise ValueError(f"{name}: expected a tensor whose last dimension is {what} = {width}, got {describe(x)}")
    if x.dtype != like.dtype or x.device != like.device:
        raise ValueError(f"{name}: expected {like.dtype} on {like.device} (the SAE's dtype and device), "
                         f"got {x.dtype} on {x.device}; convert with .to(sae.W_dec)")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: expected finite values, got {describe(x)} containing NaN or inf")
    return x


def is_activations(value) -> bool:
    """True for a saelab `Activations` (known by its shape: layers, iter_rows, gather)."""
    return all(hasattr(value, a) for a in ("layers", "iter_rows", "gather")) and not isinstance(value, torch.Tensor)


def row_width(activations) -> int:
    """The width of each row of an `Activations` or a 2-D tensor (no checks)."""
    if isinstance(activations, torch.Tensor):
        return activations.shape[1]
    return activations.width


def check_activations(name: str, activations):
    """`activations` if it is a single-layer `Activations` or a 2-D float tensor [n_tokens, width]."""
    if is_activations(activations):
        if len(activations.layers) != 1:
            raise ValueError(f"{name}: expected a single-layer Activations, got one with layers "
                             f"{list(activations.layers)}; select one with {name}[{activations.layers[0]}]")
        return activations
    if isinstance(activations, torch.Tensor) and activations.ndim == 2 and activations.is_floating_point():
        return activations
    raise ValueError(f"{name}: expected a single-layer Activations or a float tensor [n_tokens, d_model], "
                     f"got {describe(activations)}")


def check_rows(name: str, activations, width: int | None = None) -> int:
    """The number of rows of `activations` (see `check_activations`) after checking that it has rows
    and, when `width` is given, that each row has that width (an SAE's d_in)."""
    activations = check_activations(name, activations)
    if width is not None and row_width(activations) != width:
        raise ValueError(f"{name}: expected rows of width d_model = {width} (the SAE's), "
                         f"got {row_width(activations)}")
    n = len(activations)
    if n == 0:
        raise ValueError(f"{name}: expected at least one row, got 0 rows")
    return n


def check_index(name: str, index, n: int) -> torch.Tensor:
    """Row numbers as a 1-D int64 tensor with values in [0, n) (lists, ranges, numpy arrays accepted)."""
    if isinstance(index, np.ndarray):
        index = torch.from_numpy(index)
    elif isinstance(index, (list, tuple, range)):
        index = torch.as_tensor(list(index), dtype=torch.int64)
    if (not isinstance(index, torch.Tensor) or index.ndim != 1 or index.is_floating_point()
            or index.dtype == torch.bool or index.is_complex()):
        raise ValueError(f"{name}: expected a 1-D integer tensor of row numbers, got {describe(index)}")
    index = index.to(torch.int64)
    if len(index) and (int(index.min()) < 0 or int(index.max()) >= n):
        raise ValueError(f"{name}: row numbers must be in [0, {n}), got min {int(index.min())}, "
                         f"max {int(index.max())}")
    return index
