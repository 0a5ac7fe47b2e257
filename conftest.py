"""Shared pytest fixtures: the embedded model on CPU, small slices of the shipped texts, the GPT-2
small stand-in (tests/gpt2_standin.py), and the `gpu` / `gpt2` markers."""
import os
import sys
from pathlib import Path

os.environ.setdefault("SAELAB_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

TESTS_DIR = Path(__file__).resolve().parent / "tests"


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs CUDA; skipped cleanly on a machine without it")
    config.addinivalue_line("markers", "gpt2: runs on the GPT-2 small stand-in (12 layers, d_model 768: "
                                       "tens of seconds on CPU); deselect with -m 'not gpt2'")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def model():
    """The embedded "tiny" model on CPU (loaded once per test session)."""
    from saelab.models import load_model
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return load_model("tiny", device="cpu")


@pytest.fixture(scope="session")
def ref_sae():
    """The shipped reference SAE (SAELens's standard SAE, tiny's layer 2), loaded once per test session."""
    import saelab
    return saelab.load_sae("tiny_layer2_standard")


@pytest.fixture(scope="session")
def train_texts():
    """The first 40 shipped training texts (prose and code)."""
    from saelab.data import load_texts
    return load_texts("train", max_texts=40)


@pytest.fixture(scope="session")
def test_texts():
    """The first 20 shipped held-out texts."""
    from saelab.data import load_texts
    return load_texts("test", max_texts=20)


def _standin():
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    import gpt2_standin
    return gpt2_standin


@pytest.fixture(scope="session")
def gpt2_hf_home(tmp_path_factory):
    """An HF_HOME folder whose cache holds the GPT-2 small stand-in ("gpt2": 12 layers, d_model 768).

    $SAELAB_GPT2_STANDIN names a folder to reuse (written there if it is not a stand-in yet), so
    runs and subprocesses share one; else it is written once per session (~10 s, ~480 MB) in a
    temporary folder. Subprocesses get it with `gpt2_standin.offline_env(gpt2_hf_home)`.
    """
    standin = _standin()
    home = os.environ.get(standin.ENV_VAR, "").strip()
    return standin.write_standin(home or tmp_path_factory.mktemp("gpt2-standin"))


@pytest.fixture(scope="session")
def gpt2_model(gpt2_hf_home):
    """`saelab.load_model("gpt2-small")` on CPU, loaded offline from the stand-in (once per session)."""
    from saelab.models import load_model
    with _standin().use_standin(gpt2_hf_home):
        return load_model("gpt2-small", device="cpu")


@pytest.fixture
def small_disk(tmp_path):
    """mount(mib): a mount point for a real tmpfs of `mib` MiB, unmounted after the test (the test is
    skipped where this machine cannot mount one)."""
    import subprocess
    mounted = []

    def mount(mib: int) -> Path:
        point = tmp_path / f"disk{mib}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
        mounted.append(point)
        return point
    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=True)


@pytest.fixture
def fill_disk():
    """fill(point): fill the file system of `point` to the last byte (the file `point/filler`)."""
    def fill(point: Path) -> None:
        fd = os.open(point / "filler", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            for chunk in (65536, 4096, 1):   # smaller and smaller, to the last byte
                try:
                    while os.write(fd, bytes(chunk)):
                        pass
                except OSError:
                    pass
        finally:
            os.close(fd)
    return fill
