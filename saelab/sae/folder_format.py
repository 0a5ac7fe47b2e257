"""The SAELens folder format: `cfg.json` + `sae_weights.safetensors`, written whole and read whole.

`save_tied` writes the folder beside its target and swaps it in (`files.atomic_folder`), so a reader
sees the previous save or this one, never a mix; `read_folder` opens both files from the same
folder (one directory handle), so a save swapping the folder meanwhile cannot mix them either.
Saves refuse non-finite weights and non-finite metadata; loads refuse a cfg `dtype` that the
tensors do not have. cfg.json's metadata carries what SAELens's `ActivationsStore.from_sae` needs
(`SAELENS_DATASET_DEFAULTS` where the trainer recorded nothing).
"""
from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import torch

from saelab.data import TEXTS_DIR
from saelab.files import atomic_folder
from saelab.utils import describe

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
#: cfg.json above this size is refused before reading (SAELens's cfg.json is a few kB).
MAX_CFG_BYTES = 1 << 20
#: Weights beyond this magnitude are refused as corrupt (an SAE's weights are O(1); this bound keeps
#: encode and decode finite in float32 for any real width).
MAX_WEIGHT = 1e6

# The SAELens on-disk format version we write (SAELens treats configs without it as pre-6.0 and
# rewrites them, dropping our metadata). It names the format, not the installed SAELens.
SAE_LENS_FORMAT_VERSION = "6.0.0"
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: What a save may replace in an existing folder: SAELens's files (it also writes
#: sparsity.safetensors) and the `.tmpXXXXXX` files that interrupted saves of saelab <= 0.1 left there.
SAE_FOLDER_FILES = (CFG_FILENAME, WEIGHTS_FILENAME, "sparsity.safetensors", ".tmp*")
#: SAELens's dataset metadata, used where sae.metadata has no value of its own. dataset_path is the
#: shipped texts' folder, which `datasets.load_dataset` reads offline (train.jsonl.gz -> "train").
#: saelab runs each text alone (no concatenation), BOS first, and drops BOS rows by default.
#: dataset_path is necessarily the saving machine's absolute path: SAELens's ActivationsStore hands it to
#: `datasets.load_dataset`, which needs a real path, and no marker would mean anything to SAELens. It is
#: listed in `saelab_defaults`, so saelab's own loader drops it: a folder copied to another machine
#: loads there with no stale path in `sae.metadata` (a SAELens user there points it at that machine's
#: `saelab.data.TEXTS_DIR`).
SAELENS_DATASET_DEFAULTS = {
    "model_class_name": "HookedTransformer", "hook_head_index": None, "context_size": 128,
    "prepend_bos": True, "dataset_path": str(TEXTS_DIR), "seqpos_slice": [None],
    "exclude_special_tokens": True, "disable_concat_sequences": True, "sequence_separator_token": "bos",
    "model_from_pretrained_kwargs": {},
}
#: cfg.json's fields that saelab or sae_lens read before any tensor: (JSON types, allowed values or None).
CFG_FIELDS = {"architecture": ((str,), None), "device": ((str,), None), "metadata": ((dict,), None),
              "apply_b_dec_to_input": ((bool,), None),
              "normalize_activations": ((str,), {"none", "expected_average_only_in", "constant_norm_rescale",
                                                 "layer_norm"}),
              "reshape_activations": ((str,), {"none", "hook_z"})}
# Written by save, removed by load (so `load(save(sae)).metadata == sae.metadata`).
_FORMAT_METADATA_KEYS = ("sae_lens_version", "sae_lens_training_version", "saelab_version", "saelab_class",
                         "saelab_defaults", "saelab_input_scale")
#: cfg.json's metadata key holding TiedSAE.input_scale s (folded into W_enc = W.T / s, W_dec = s W, b_dec).
INPUT_SCALE_KEY = "saelab_input_scale"


def saelens_metadata(metadata: dict) -> dict:
    """`metadata` plus SAELens's dataset keys it lacks; `saelab_defaults` lists the keys added.
    context_size comes from `context_size`, else `context_length` (saelab's name), else 128."""
    out = dict(metadata)
    if "context_size" not in out and isinstance(out.get("context_length"), int):
        out["context_size"] = out["context_length"]
    if "exclude_special_tokens" not in out and isinstance(out.get("exclude_bos"), bool):
        out["exclude_special_tokens"] = out["exclude_bos"]
    out.update({k: v for k, v in SAELENS_DATASET_DEFAULTS.items() if k not in out})
    out["saelab_defaults"] = [k for k in out if k not in metadata]
    return out


def _check_finite_json(name: str, value) -> None:
    """Refuse NaN / inf anywhere in a JSON-able value (bare NaN is not JSON), naming where it is."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value} (NaN and inf are not valid JSON; "
                         f"store None or a string instead)")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite_json(f"{name}[{k!r}]", v)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite_json(f"{name}[{i}]", v)


def save_tied(sae, path) -> Path:
    """Write `sae` as the SAELens folder `path/` (see `TiedSAE.save`); returns the folder."""
    from safetensors.torch import save

    from saelab import __version__

    try:
        metadata = json.loads(json.dumps(sae.metadata))
    except (TypeError, ValueError) as e:
        raise ValueError(f"sae.metadata: expected JSON-serialisable values, got {sae.metadata!r} ({e})") from None
    _check_finite_json("sae.metadata", metadata)
    scale = sae.input_scale
    weight = sae.encoder.weight.detach()
    wide = weight.double()                                          # s folded in float64, then rounded once
    tensors = {"W_enc": (wide.T / scale).to(weight.dtype), "W_dec": (wide * scale).to(weight.dtype),
               "b_enc": sae.encoder.bias.detach(), "b_dec": (sae.decoder_bias.detach().double() * scale).to(weight.dtype)}
    for key, t in tensors.items():
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"sae: {key} contains NaN or inf; refusing to save an SAE that cannot be used "
                             f"(retrain it, or reload the last good save)")
    tensors = {k: t.contiguous().cpu() for k, t in tensors.items()}
    metadata = saelens_metadata(metadata)
    metadata.update(sae_lens_version=SAE_LENS_FORMAT_VERSION, sae_lens_training_version=None,
                    saelab_version=__version__, saelab_class="TiedSAE", **{INPUT_SCALE_KEY: scale})
    cfg = {"architecture": "standard", "d_in": sae.d_model, "d_sae": sae.n_features,
           "dtype": str(weight.dtype).removeprefix("torch."), "device": str(weight.device),
           "apply_b_dec_to_input": False, "normalize_activations": "none", "reshape_activations": "none",
           "metadata": metadata}
    folder = Path(path)
    with atomic_folder(folder, replaceable=SAE_FOLDER_FILES) as tmp:
        (tmp / WEIGHTS_FILENAME).write_bytes(save(tensors))   # a full disk raises OSError(ENOSPC) here
        (tmp / CFG_FILENAME).write_text(json.dumps(cfg, indent=2, allow_nan=False), encoding="utf-8")
    return folder


def load_tied(path, device, cls):
    """Load a tied SAE folder (see `TiedSAE.load`) as `cls` (saelab.TiedSAE)."""
    from saelab.models import resolve_device

    folder = Path(path)
    dev = resolve_device(device)
    cfg, tensors = read_folder(folder)
    scale = _input_scale(folder, cfg)
    _check_tied(folder, cfg, tensors, scale)
    sae = cls(cfg["d_in"], cfg["d_sae"], seed=0)
    sae.to(torch.float64)                                           # s unfolded in float64, then rounded once
    with torch.no_grad():
        sae.encoder.weight.copy_(tensors["W_dec"].double() / scale)
        sae.encoder.bias.copy_(tensors["b_enc"])
        sae.decoder_bias.copy_(tensors["b_dec"].double() / scale)
    sae.input_scale = scale
    sae.metadata = {k: v for k, v in cfg.get("metadata", {}).items() if k not in _FORMAT_METADATA_KEYS}
    for key in cfg.get("metadata", {}).get("saelab_defaults", []):
        sae.metadata.pop(key, None)
    return sae.to(device=dev, dtype=DTYPES[cfg.get("dtype", "float32")])


def read_folder(path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(cfg, tensors) of a SAELens folder of any architecture, both read from the same folder.

    Checks: cfg.json is a JSON object with positive int d_in / d_sae, a known dtype and a metadata
    object; every tensor is a finite float tensor of cfg's dtype. Errors name the file.
    """
    folder = Path(path)
    for _ in range(3):  # a save that swaps the folder between our two opens: read it again
        raw = _read_both(folder)
        if raw is not None:
            break
    else:
        raise RuntimeError(f"{folder}: the folder kept changing while being read (saves in progress?)")
    cfg = _parse_cfg(folder / CFG_FILENAME, raw[0])
    tensors = _parse_weights(folder / WEIGHTS_FILENAME, raw[1])
    want = cfg.get("dtype", "float32")
    for key, t in tensors.items():
        if not t.is_floating_point():
            raise RuntimeError(f"{folder / WEIGHTS_FILENAME}: expected {key} as a float tensor, got {describe(t)}")
        if t.dtype != DTYPES[want]:
            raise RuntimeError(f"{folder / WEIGHTS_FILENAME}: {key} is {str(t.dtype).removeprefix('torch.')} but "
                               f"{CFG_FILENAME} says dtype {want!r}; the folder's two files disagree")
        if not bool(torch.isfinite(t).all()):
            raise RuntimeError(f"{folder / WEIGHTS_FILENAME}: {key} contains NaN or inf")
        if t.numel() and float(t.abs().max()) > MAX_WEIGHT:
            raise RuntimeError(f"{folder / WEIGHTS_FILENAME}: {key} holds {float(t.abs().max()):.3g}, beyond "
                               f"{MAX_WEIGHT:g} (an SAE's weights are O(1)): corrupt")
    return cfg, tensors


def _read_both(folder: Path) -> tuple[bytes, bytes] | None:
    """The bytes of cfg.json and the weights, opened through one handle on `folder`; None when the
    folder was replaced between the two opens. Only regular files are read (`_open_regular`)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"path: expected a SAELens folder with {CFG_FILENAME} and {WEIGHTS_FILENAME}, "
                                f"but {folder} is not a folder")
    use_dir_fd = os.open in os.supports_dir_fd  # else (no directory handles here) plain paths
    dir_fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if use_dir_fd else None
    try:
        fds = []
        try:
            for name in (CFG_FILENAME, WEIGHTS_FILENAME):
                try:
                    fds.append(_open_regular(folder, name, dir_fd))
                except FileNotFoundError:
                    if dir_fd is not None and _replaced(folder, dir_fd):
                        return None
                    _missing(folder / name)
            return tuple(_read_fd(fd) for fd in fds)
        finally:
            for fd in fds:
                os.close(fd)
    finally:
        if dir_fd is not None:
            os.close(dir_fd)


def _open_regular(folder: Path, name: str, dir_fd: int | None) -> int:
    """A descriptor of the regular file `folder/name`, else RuntimeError naming it: opened without
    blocking (a FIFO would wait for a writer), then refused unless it is a regular file (a FIFO, a
    device such as /dev/zero behind a symlink, a folder) and, for cfg.json, at most MAX_CFG_BYTES."""
    file = folder / name
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(name, flags, dir_fd=dir_fd) if dir_fd is not None else os.open(file, flags)
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = f"expected a regular file, got {_file_kind(info.st_mode)}"
    elif name == CFG_FILENAME and info.st_size > MAX_CFG_BYTES:
        problem = f"expected at most {MAX_CFG_BYTES:,} bytes (a cfg.json is a few kB), got {info.st_size:,}"
    if problem:
        os.close(fd)
        raise RuntimeError(f"{file}: {problem}; not read")
    return fd


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((kind for test, kind in kinds if test(mode)), "a special file")


def _replaced(folder: Path, dir_fd: int) -> bool:
    try:
        return os.stat(folder).st_ino != os.fstat(dir_fd).st_ino
    except FileNotFoundError:
        return True


def _missing(file: Path):
    if file.name == CFG_FILENAME:
        raise FileNotFoundError(f"{file} is missing: expected a SAELens folder with {CFG_FILENAME} and "
                                f"{WEIGHTS_FILENAME}")
    raise FileNotFoundError(f"{file} is missing: expected the SAE weights next to {CFG_FILENAME}")


def _read_fd(fd: int) -> bytes:
    os.set_blocking(fd, True)
    chunks = []
    while chunk := os.read(fd, 1 << 24):
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_cfg(file: Path, raw: bytes) -> dict:
    try:
        cfg = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RuntimeError(f"{file} is corrupt: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise RuntimeError(f"{file} is corrupt: expected a JSON object, got {type(cfg).__name__}")
    for key in ("d_in", "d_sae"):
        if isinstance(cfg.get(key), bool) or not isinstance(cfg.get(key), int) or cfg[key] < 1:
            raise RuntimeError(f"{file}: expected a positive integer {key!r}, got {cfg.get(key)!r}")
    if isinstance(cfg.get("dtype"), str):
        cfg["dtype"] = cfg["dtype"].removeprefix("torch.")  # some SAELens configs write "torch.float32"
    if not isinstance(cfg.get("dtype", "float32"), str) or cfg.get("dtype", "float32") not in DTYPES:
        raise RuntimeError(f"{file}: expected dtype one of {sorted(DTYPES)}, got {cfg.get('dtype')!r}")
    for key, (kinds, choices) in CFG_FIELDS.items():
        value = cfg.get(key)
        if key in cfg and (not isinstance(value, kinds) or choices and value not in choices):
            want = f"one of {sorted(choices)}" if choices else " or ".join(k.__name__ for k in kinds)
            raise RuntimeError(f"{file}: expected {key!r} to be {want}, got {value!r}")
    defaults = cfg.get("metadata", {}).get("saelab_defaults", [])
    if not isinstance(defaults, list) or not all(isinstance(k, str) for k in defaults):
        raise RuntimeError(f"{file}: expected metadata.saelab_defaults to be a list of key names, got {defaults!r}")
    return cfg


def _parse_weights(file: Path, raw: bytes) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(raw)
    except (SafetensorError, OSError, ValueError) as e:
        raise RuntimeError(f"{file} is corrupt: not a readable safetensors file ({e})") from None


def _input_scale(folder: Path, cfg: dict) -> float:
    """TiedSAE.input_scale as saved in cfg.json's metadata (1.0 when absent: any SAELens folder)."""
    scale = cfg.get("metadata", {}).get(INPUT_SCALE_KEY, 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 1 / MAX_WEIGHT <= scale <= MAX_WEIGHT:
        raise RuntimeError(f"{folder / CFG_FILENAME}: expected metadata.{INPUT_SCALE_KEY} to be a positive "
                           f"number in [{1 / MAX_WEIGHT:g}, {MAX_WEIGHT:g}], got {scale!r}")
    return float(scale)


def _check_tied(folder: Path, cfg: dict, tensors: dict[str, torch.Tensor], scale: float) -> None:
    """The cfg settings and tensor shapes TiedSAE needs, and W_enc * s == W_dec.T / s (s = input_scale)."""
    file = folder / CFG_FILENAME
    expected = {"architecture": "standard", "apply_b_dec_to_input": False, "normalize_activations": "none"}
    for key, want in expected.items():
        got = cfg.get(key, want if key != "apply_b_dec_to_input" else True)  # SAELens' defaults
        if got != want:
            raise RuntimeError(f"{file}: TiedSAE needs {key}={json.dumps(want)}, got {json.dumps(got)}")
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    file = folder / WEIGHTS_FILENAME
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
    missing = [k for k in shapes if k not in tensors]
    if missing:
        raise RuntimeError(f"{file}: expected tensors {list(shapes)}, missing {missing} (found {sorted(tensors)})")
    for key, shape in shapes.items():
        if tuple(tensors[key].shape) != shape:
            raise RuntimeError(f"{file}: expected {key} as a float tensor of shape {list(shape)} (cfg.json d_in="
                               f"{d_in}, d_sae={d_sae}), got {describe(tensors[key])}")
    W_enc, W_dec = tensors["W_enc"].T.double() * scale, tensors["W_dec"].double() / scale
    tol = max(1e-6, 8 * torch.finfo(tensors["W_dec"].dtype).eps)   # each side was rounded once to its dtype
    if not torch.allclose(W_enc, W_dec, rtol=tol, atol=tol * 1e-2 * float(W_dec.abs().max())):
        diff = (W_enc - W_dec).abs().max().item()
        folded = "" if scale == 1.0 else f" / s^2 (s = its input_scale, {scale:g})"
        raise RuntimeError(f"{file}: expected a tied SAE with W_enc == W_dec.T{folded}, got untied weights "
                           f"(max difference {diff:.3g}); TiedSAE cannot load it")
