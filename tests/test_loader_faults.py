"""The SAE folder loader against odd files (issue 19, rows 10 and 11) and a seeded fuzz of mutated
folders: every folder either loads to an SAE whose encode/decode give finite values of the right
shape, or raises FileNotFoundError / RuntimeError naming the folder; never another exception, a
hang or a memory blow-up."""
import itertools
import json
import os
import resource
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saelab.sae.folder_format import CFG_FILENAME, CFG_FIELDS, MAX_CFG_BYTES, WEIGHTS_FILENAME
from saelab.sae.saelens import load_sae
from saelab.sae.tied import TiedSAE

D_IN, D_SAE = 8, 16
DOCUMENTED = (FileNotFoundError, RuntimeError)
HANG_GUARD_S = 10          # one load takes milliseconds
FUZZ_CASES = 1000
ODD_VALUES = [None, True, False, 0, -1, 3, 1.5, float(2 ** 70), "", "x", "float32", "none", [], [1], {}, {"a": 1}]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(cfg dict, weights bytes) of a saved TiedSAE(8, 16)."""
    folder = tmp_path_factory.mktemp("base") / "sae"
    TiedSAE(D_IN, D_SAE, seed=0).save(folder)
    return json.loads((folder / CFG_FILENAME).read_text()), (folder / WEIGHTS_FILENAME).read_bytes()


def _write(folder: Path, cfg, weights: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / CFG_FILENAME).write_bytes(cfg if isinstance(cfg, bytes) else json.dumps(cfg).encode())
    (folder / WEIGHTS_FILENAME).write_bytes(weights)
    return folder


def _guarded_load(folder: Path):
    """load_sae(folder) under a hang guard (HANG_GUARD_S, many times a load's milliseconds)."""
    def hang(*_):
        raise TimeoutError(f"loading {folder} hung")
    previous = signal.signal(signal.SIGALRM, hang)
    signal.setitimer(signal.ITIMER_REAL, HANG_GUARD_S)
    try:
        return load_sae(folder, device="cpu")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _load_or_documented_error(folder: Path):
    """An SAE with finite encode/decode of the right shape, or None after a documented error naming
    the folder. Anything else fails the test."""
    try:
        sae = _guarded_load(folder)
    except DOCUMENTED as e:
        assert str(folder) in str(e), f"{type(e).__name__} does not name {folder}: {e}"
        return None
    x = torch.randn(3, sae.d_in, dtype=sae.W_dec.dtype)
    features = sae.encode(x)
    out = sae.decode(features)
    assert features.shape == (3, sae.d_sae) and out.shape == (3, sae.d_in)
    assert torch.isfinite(features).all() and torch.isfinite(out).all(), folder
    return sae


def _error(folder: Path, match: str):
    with pytest.raises(DOCUMENTED) as info:
        _guarded_load(folder)
    assert str(folder) in str(info.value) and match in str(info.value), str(info.value)


@pytest.mark.parametrize("which", [CFG_FILENAME, WEIGHTS_FILENAME])
def test_fifos_devices_and_folders_are_refused_without_reading(tmp_path, base, which):
    cfg, weights = base
    cases = {"fifo": (lambda p: os.mkfifo(p), "a FIFO"),
             "dev_zero": (lambda p: os.symlink("/dev/zero", p), "a character device"),
             "folder": (lambda p: p.mkdir(), "a folder")}
    for kind, (make, words) in cases.items():
        folder = _write(tmp_path / kind, cfg, weights)
        (folder / which).unlink()
        make(folder / which)
        start = time.monotonic()
        _error(folder, f"{folder / which}: expected a regular file, got {words}")
        assert time.monotonic() - start < 5   # the FIFO is not waited on; /dev/zero is not read
    folder = _write(tmp_path / "symlinked", cfg, weights)   # a symlink to a regular file is fine
    (folder / which).rename(tmp_path / "elsewhere")
    (folder / which).symlink_to(tmp_path / "elsewhere")
    assert _load_or_documented_error(folder) is not None


def test_a_huge_cfg_is_refused_before_reading(tmp_path, base):
    cfg, weights = base
    folder = _write(tmp_path / "big", cfg, weights)
    with open(folder / CFG_FILENAME, "r+b") as f:
        f.truncate(MAX_CFG_BYTES + 1)   # sparse: nothing to read would be cheap, it must not be read at all
    _error(folder, f"expected at most {MAX_CFG_BYTES:,} bytes")


def _untied(cfg: dict) -> dict:
    """cfg as a plain SAELens standard folder (sae_lens loads it, not saelab's TiedSAE)."""
    metadata = {k: v for k, v in cfg["metadata"].items() if not k.startswith("saelab")}
    return {**cfg, "metadata": metadata}


def test_saelens_folders_are_checked_before_sae_lens_sees_them(tmp_path, base):
    pytest.importorskip("sae_lens")
    from safetensors.torch import load, save

    cfg, weights = base
    plain = _untied(cfg)
    assert _load_or_documented_error(_write(tmp_path / "ok", plain, weights)) is not None
    tensors = load(weights)
    cases = {"narrow": ({**plain, "d_in": 4}, weights, "expected W_dec of shape [16, 4]"),
             "no_wdec": (plain, save({k: v for k, v in tensors.items() if k != "W_dec"}), "missing ['W_dec']"),
             "bogus_norm": ({**plain, "normalize_activations": "bogus"}, weights, "'normalize_activations'"),
             "yes": ({**plain, "apply_b_dec_to_input": "yes"}, weights, "'apply_b_dec_to_input' to be bool")}
    for name, (c, w, match) in cases.items():
        _error(_write(tmp_path / name, c, w), match)


# --------------------------------------------------------------------------------------------- fuzz

def _mutated(base, data) -> tuple[object, bytes, str | None]:
    """(cfg dict or bytes, weights bytes, odd file kind or None): one mutation of the base folder."""
    cfg, weights = json.loads(json.dumps(base[0])), base[1]
    kind = data.draw(st.sampled_from(["truncate_w", "flip_w", "truncate_cfg", "flip_cfg", "field", "metadata",
                                      "untied_field", "file_kind"]))
    if kind == "truncate_w":
        return cfg, weights[:data.draw(st.integers(0, len(weights) - 1))], None
    if kind == "flip_w":
        return cfg, _flip(weights, data), None
    raw = json.dumps(cfg).encode()
    if kind == "truncate_cfg":
        return raw[:data.draw(st.integers(0, len(raw) - 1))], weights, None
    if kind == "flip_cfg":
        return _flip(raw, data), weights, None
    value = data.draw(st.sampled_from(ODD_VALUES))
    if kind in ("field", "untied_field"):
        cfg = cfg if kind == "field" else _untied(cfg)
        cfg[data.draw(st.sampled_from(sorted(set(cfg) | set(CFG_FIELDS) | {"d_in", "d_sae", "dtype"})))] = value
    elif kind == "metadata":
        cfg["metadata"][data.draw(st.sampled_from(sorted(cfg["metadata"])))] = value
    else:
        return cfg, weights, data.draw(st.sampled_from(["fifo", "dev_zero", "folder", "dangling", "missing"]))
    return cfg, weights, None


def _flip(raw: bytes, data) -> bytes:
    position = data.draw(st.integers(0, len(raw) * 8 - 1))
    out = bytearray(raw)
    out[position // 8] ^= 1 << (position % 8)
    return bytes(out)


def _make_odd(path: Path, kind: str) -> None:
    path.unlink()
    {"fifo": lambda: os.mkfifo(path), "dev_zero": lambda: os.symlink("/dev/zero", path), "folder": path.mkdir,
     "dangling": lambda: os.symlink(path.parent / "nowhere", path), "missing": lambda: None}[kind]()


def test_fuzzed_folders_load_or_raise_a_documented_error_naming_the_folder(tmp_path, base):
    pytest.importorskip("sae_lens")
    counts = {"loaded": 0, "refused": 0}
    numbers = itertools.count()
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()

    @settings(max_examples=FUZZ_CASES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def case(data):
        cfg, weights, odd = _mutated(base, data)
        folder = tmp_path / f"case{next(numbers)}"
        _write(folder, cfg, weights)
        try:
            if odd:
                _make_odd(folder / data.draw(st.sampled_from([CFG_FILENAME, WEIGHTS_FILENAME])), odd)
            counts["loaded" if _load_or_documented_error(folder) is not None else "refused"] += 1
        finally:
            shutil.rmtree(folder)
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_start) / 1024
        assert grown_mb < 500, f"memory grew by {grown_mb:.0f} MB"

    case()
    seconds = time.monotonic() - started
    print(f"fuzz: {sum(counts.values())} folders ({counts}) in {seconds:.1f}s")
    assert sum(counts.values()) >= FUZZ_CASES and counts["loaded"] > 0 and counts["refused"] > 0
    assert seconds < 60
