"""Shared pytest fixtures: the embedded model on CPU and small slices of the shipped texts."""
import os

os.environ.setdefault("SAELAB_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def model():
    """The embedded "tiny" model on CPU (loaded once per test session)."""
    from saelab.models import load_model
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return load_model("tiny", device="cpu")


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
