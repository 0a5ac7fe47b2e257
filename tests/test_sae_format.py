"""SAE folders: all-or-nothing saves (interrupted at every step, and killed for real), no stray temps,
strict loads, and the SAELens dataset metadata that `ActivationsStore.from_sae` needs."""
import json
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch

import saelab.files as files
from saelab.sae.folder_format import CFG_FILENAME, WEIGHTS_FILENAME
from saelab.sae.tied import TiedSAE
from saelab.data import TEXTS_DIR
from saelab.sae.folder_format import DTYPES, SAELENS_DATASET_DEFAULTS
from subprocess_run import NO_DAC_OVERRIDE

ROOT = Path(__file__).resolve().parents[1]


def _sae(counter: int, d=16, n=64) -> TiedSAE:
    """An SAE whose save number is in both files: metadata["save"] and b_dec[0]."""
    sae = TiedSAE(d, n, seed=abs(counter))
    with torch.no_grad():
        sae.decoder_bias[0] = counter
    sae.metadata = {"save": counter, "sparsity_coef": 1e-3 * (1 + counter % 2), "hook_name": "blocks.0.hook_resid_post"}
    return sae


def _which_save(folder) -> int:
    """The save number of a folder that loads, after checking both files come from that save."""
    sae = TiedSAE.load(folder, device="cpu")
    assert sae.metadata["save"] == int(sae.decoder_bias[0]), "cfg.json and the weights come from different saves"
    return sae.metadata["save"]


def _entries(parent) -> list[str]:
    return sorted(p.name for p in Path(parent).iterdir())


class _FailOnCall:
    """Patches every file operation a save makes; the `fail_at`-th call raises KeyboardInterrupt."""
    OPS = [(os, "rename"), (os, "replace"), (os, "mkdir"), (os, "fsync"), (files, "exchange"),
           (safetensors.torch, "save_file"), (Path, "write_text")]

    def __init__(self, monkeypatch, fail_at: int):
        self.calls, self.fail_at = 0, fail_at
        for owner, name in self.OPS:
            monkeypatch.setattr(owner, name, self._wrap(getattr(owner, name)))

    def _wrap(self, func):
        def wrapped(*args, **kwargs):
            self.calls += 1
            if self.calls == self.fail_at:
                raise KeyboardInterrupt(f"simulated interrupt at file operation {self.fail_at}")
            return func(*args, **kwargs)
        return wrapped


@pytest.mark.parametrize("can_exchange", [True, False], ids=["exchange", "two-renames"])
def test_a_save_interrupted_at_every_step_leaves_the_old_or_the_new_folder(tmp_path, monkeypatch, can_exchange):
    if not can_exchange:
        monkeypatch.setattr(files, "exchange", lambda a, b: False)
    folder = tmp_path / "sae"
    _sae(0).save(folder)
    outcomes = []
    for fail_at in range(1, 100):
        with monkeypatch.context() as m:
            patch = _FailOnCall(m, fail_at)
            try:
                _sae(fail_at).save(folder)
                finished = True
            except KeyboardInterrupt:
                finished = False
        outcomes.append(_which_save(folder))
        assert outcomes[-1] in (outcomes[-2] if len(outcomes) > 1 else 0, fail_at)
        if finished:
            assert outcomes[-1] == fail_at
            break
        assert patch.calls >= fail_at                                 # (more: the old folder put back)
        _sae(-fail_at).save(folder)                                 # the next save cleans up
        assert _entries(tmp_path) == ["sae"] and _entries(folder) == [CFG_FILENAME, WEIGHTS_FILENAME]
        assert _which_save(folder) == -fail_at
        outcomes[-1] = -fail_at
    assert finished and fail_at > 5                                   # every step of a save was interrupted once


_SAVER = textwrap.dedent("""
    import os, sys, torch
    torch.set_num_threads(1)            # no thread pool yet: forking below is safe
    from saelab.sae.tied import TiedSAE
    folder = sys.argv[1]
    for line in sys.stdin:              # one round per line: fork a saver, which the test kills
        first = int(line)
        pid = os.fork()
        if pid == 0:
            sae = TiedSAE(128, 4096, seed=0)
            for i in range(first, first + 10**6):
                with torch.no_grad():
                    sae.decoder_bias[0] = i
                sae.metadata = {"save": i, "layer": i % 2, "sparsity_coef": [1e-3, 3e-3][i % 2]}
                sae.save(folder)
                if i == first:
                    os.write(1, f"{os.getpid()}\\n".encode())
        os.waitpid(pid, 0)
        print("reaped", flush=True)
""")


def test_kill_9_during_repeated_saves_never_mixes_two_saves(tmp_path):
    folder, rng = tmp_path / "sae", random.Random(0)
    env = dict(os.environ, PYTHONPATH=str(ROOT), SAELAB_PROGRESS="0")
    server = subprocess.Popen([sys.executable, "-c", _SAVER, str(folder)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    saved, stray = [], 0
    try:
        for kill in range(6):
            server.stdin.write(f"{1000 * kill}\n")
            server.stdin.flush()
            saver = int(server.stdout.readline())                   # its first save is done
            time.sleep(rng.uniform(0.0, 0.2))
            os.kill(saver, signal.SIGKILL)
            assert server.stdout.readline().strip() == "reaped"
            saved.append(_which_save(folder))                       # loads, cfg and weights from one save
            assert 1000 * kill <= saved[-1] < 1000 * (kill + 1)
            stray += len(_entries(tmp_path)) - 1
    finally:
        server.stdin.close()
        server.wait(timeout=600)
    assert sum(s % 1000 for s in saved) > 0                         # some kills came after several saves
    _sae(7, d=128, n=4096).save(folder)
    assert _entries(tmp_path) == ["sae"] and _which_save(folder) == 7
    print(f"saves reached {saved}; temps left by the kills before the next save: {stray}")


def test_save_refuses_non_finite_weights_and_metadata(tmp_path):
    sae = _sae(1)
    sae.metadata["history"] = [{"loss": 0.5}, {"loss": math.nan}]
    with pytest.raises(ValueError, match=r"sae.metadata\['history'\]\[1\]\['loss'\]: expected a finite number, got nan"):
        sae.save(tmp_path / "sae")
    sae = _sae(1)
    with torch.no_grad():
        sae.encoder.bias[3] = math.inf
    with pytest.raises(ValueError, match=r"sae: b_enc contains NaN or inf; refusing to save"):
        sae.save(tmp_path / "sae")
    assert _entries(tmp_path) == []


def test_save_never_deletes_files_that_are_not_an_sae_folders(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match=r"notes exists and holds \['thesis.tex'\], which this save would delete"):
        _sae(1).save(folder)
    assert _entries(folder) == ["thesis.tex"] and _entries(tmp_path) == ["notes"]
    old = _sae(1).save(tmp_path / "old_version")
    (old / ".tmpk2j4_x").write_bytes(b"left by an interrupted save of saelab 0.1")
    _sae(2).save(old)                                               # replaced whole, stray temp included
    assert _entries(old) == [CFG_FILENAME, WEIGHTS_FILENAME] and _which_save(old) == 2
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"path: expected a folder, got the existing file"):
        _sae(1).save(tmp_path / "file")


def test_load_refuses_a_dtype_that_disagrees_with_cfg(tmp_path):
    folder = _sae(1).save(tmp_path / "sae")
    weights = safetensors.torch.load_file(str(folder / WEIGHTS_FILENAME))
    safetensors.torch.save_file({k: v.double() for k, v in weights.items()}, str(folder / WEIGHTS_FILENAME))
    with pytest.raises(RuntimeError, match=r"sae_weights.safetensors: \w+ is float64 but cfg.json says "
                                           r"dtype 'float32'"):
        TiedSAE.load(folder, device="cpu")
    cfg = json.loads((folder / CFG_FILENAME).read_text())
    (folder / CFG_FILENAME).write_text(json.dumps(dict(cfg, dtype="float64")))
    assert TiedSAE.load(folder, device="cpu").encoder.weight.dtype == torch.float64


def test_cfg_carries_saelens_dataset_metadata_and_round_trips(tmp_path):
    sae = _sae(1)
    sae.metadata.update(context_length=64, model_name="tiny")
    folder = sae.save(tmp_path / "sae")
    meta = json.loads((folder / CFG_FILENAME).read_text())["metadata"]
    assert meta["context_size"] == 64 and meta["prepend_bos"] is True and meta["model_name"] == "tiny"
    assert {k: meta[k] for k in SAELENS_DATASET_DEFAULTS if k != "context_size"} == {
        k: v for k, v in SAELENS_DATASET_DEFAULTS.items() if k != "context_size"}
    assert TiedSAE.load(folder, device="cpu").metadata == sae.metadata   # the defaults are not added on load


def test_saelens_activations_store_from_sae_works_offline(tmp_path):
    from sae_lens import SAE, ActivationsStore

    import saelab

    model = saelab.load_model("tiny", device="cpu")
    sae = TiedSAE(model.cfg.d_model, 256, seed=0)
    sae.metadata = {"model_name": model.cfg.model_name, "hook_name": "blocks.1.hook_resid_post", "layer": 1}
    folder = sae.save(tmp_path / "sae")
    loaded = SAE.load_from_disk(str(folder), device="cpu")
    store = ActivationsStore.from_sae(model, loaded, dataset=loaded.cfg.metadata.dataset_path,
                                      store_batch_size_prompts=2, n_batches_in_buffer=2,
                                      train_batch_size_tokens=32, device="cpu")
    assert store.context_size == SAELENS_DATASET_DEFAULTS["context_size"] and store.prepend_bos is True
    tokens = store.get_batch_tokens()
    assert tokens.shape == (2, store.context_size) and bool((tokens[:, 0] == model.tokenizer.bos_token_id).all())
    acts = store.next_batch()
    assert acts.shape == (32, model.cfg.d_model) and bool(torch.isfinite(acts).all())
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(acts), sae.encode(acts), rtol=1e-5, atol=1e-5)


def test_atomic_file_writes_keep_the_old_file_and_reclaim_only_dead_writers_temps(tmp_path, monkeypatch):
    target = tmp_path / "report.html"
    files.atomic_write_text(target, "old")
    with monkeypatch.context() as m:
        m.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            files.atomic_write_text(target, "new")
    assert target.read_text() == "old" and _entries(tmp_path) == ["report.html"]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    prefix = files.temp_prefix(target)
    stale, live = tmp_path / f"{prefix}{int(dead.stdout)}-0123abcd", tmp_path / f"{prefix}1-0123abcd"  # pid 1 lives
    stale.write_text("half"), live.write_text("in progress")
    files.atomic_write_text(target, "new")
    assert target.read_text() == "new" and _entries(tmp_path) == sorted(["report.html", live.name])
    with pytest.raises(ValueError, match=r"path: expected a file or folder path \(str or Path\), got int 3"):
        files.atomic_write_text(3, "x")


# --------------------------------------------------------------------------- issue 18: the review's defects

@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_every_dtype_round_trips_with_an_input_scale(tmp_path, dtype):
    """The scale is folded in (and unfolded) in float64 and rounded once, and the tie is checked at the
    dtype's own precision: half-precision SAEs with an input scale load back."""
    sae = TiedSAE(16, 48, seed=0)
    sae.input_scale = 7.3
    sae = sae.to(DTYPES[dtype])
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(0)).to(DTYPES[dtype]) * 7.3
    loaded = TiedSAE.load(sae.save(tmp_path / dtype), device="cpu")
    assert loaded.encoder.weight.dtype == DTYPES[dtype] and loaded.input_scale == 7.3
    ulp = torch.finfo(DTYPES[dtype]).eps
    torch.testing.assert_close(loaded.encoder.weight, sae.encoder.weight, rtol=2 * ulp, atol=0)
    torch.testing.assert_close(loaded.decode(loaded.encode(x)).double(), sae.decode(sae.encode(x)).double(),
                               rtol=0, atol=64 * ulp * float(x.abs().max()))


def test_numpy_sizes_are_stored_as_ints_and_save(tmp_path):
    import numpy as np
    sae = TiedSAE(np.int64(16), np.int64(32), seed=np.int64(0))
    assert type(sae.d_model) is int and type(sae.n_features) is int
    cfg = json.loads((sae.save(tmp_path / "np") / CFG_FILENAME).read_text())
    assert (cfg["d_in"], cfg["d_sae"]) == (16, 32)


def test_the_dataset_path_is_this_machines_and_never_reaches_a_loaded_sae(tmp_path):
    folder = TiedSAE(8, 16, seed=0).save(tmp_path / "sae")
    cfg = json.loads((folder / CFG_FILENAME).read_text())
    assert cfg["metadata"]["dataset_path"] == str(TEXTS_DIR) and "dataset_path" in cfg["metadata"]["saelab_defaults"]
    cfg["metadata"]["dataset_path"] = "/another/machine/site-packages/saelab/assets/texts"   # copied elsewhere
    (folder / CFG_FILENAME).write_text(json.dumps(cfg))
    assert "dataset_path" not in TiedSAE.load(folder, device="cpu").metadata


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/setpriv").exists(),
                    reason="drops CAP_DAC_OVERRIDE with setpriv, as root")
def test_saving_over_a_read_only_folder_leaves_no_old_copy(tmp_path):
    """Issue 19 row 12: an SAE folder of mode 555, saved over by root without CAP_DAC_OVERRIDE (so the
    mode binds): the new save is in place and the old copy is removed, not left as a hidden temp."""
    folder = tmp_path / "sae"
    _sae(1).save(folder)
    folder.chmod(0o555)
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from test_sae_format import _sae; "
            f"_sae(2).save({str(folder)!r})")
    done = subprocess.run([*NO_DAC_OVERRIDE, sys.executable, "-W", "error", "-c", code],
                          capture_output=True, text=True, timeout=600)   # a hang guard
    assert done.returncode == 0, done.stderr
    assert _which_save(folder) == 2 and sorted(os.listdir(tmp_path)) == ["sae"]


def test_an_old_copy_that_cannot_be_removed_is_reported(tmp_path, monkeypatch):
    folder = _sae(1).save(tmp_path / "sae")
    monkeypatch.setattr(files, "_remove", lambda path: None)   # e.g. a folder of another owner
    with pytest.warns(RuntimeWarning, match=r"\.sae\.saelab-tmp-\d+-[0-9a-f]{8} \(the previous sae or an unfinished "
                                            r"one\) could not be removed"):
        _sae(2).save(folder)
