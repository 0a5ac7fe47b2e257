"""The shipped texts (prose and code, train / held-out test) and the lab's prompts."""
from __future__ import annotations

import gzip
import json
from functools import lru_cache

from saelab.utils import ASSETS_DIR
from saelab.validate import check_choice, check_int

TEXTS_DIR = ASSETS_DIR / "texts"
SPLITS = ("train", "test")
KINDS = ("prose", "code")

#: The original notebook's five training prompts (it repeats them ten times).
NOTEBOOK_PROMPTS = (
    "The capital of France is Paris.",
    "def fibonacci(n): return n if n <= 1 else",
    "What is the meaning of life?",
    "I am so happy today!",
    "The quick brown fox jumps over the lazy dog.",
)

#: The original notebook's four test prompts for the layer comparison, by name.
TEST_PROMPTS = {
    "Code": "def hello_world():",
    "Question": "What is the capital?",
    "Emotion": "I am very happy!",
    "Factual": "The moon orbits Earth.",
}

#: The old name of NOTEBOOK_PROMPTS ("seed" now only means a random seed); kept until the lab source,
#: the notebooks and the benchmarks switch.


@lru_cache(maxsize=None)
def _documents(split: str) -> tuple[dict, ...]:
    path = TEXTS_DIR / f"{split}.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"saelab package data is missing: {path}; reinstall saelab")
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            docs = tuple(json.loads(line) for line in f if line.strip())
    except (OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RuntimeError(f"saelab package data is corrupt: {path} could not be read ({e}); reinstall saelab") from e
    return docs


def load_documents(split: str = "train") -> list[dict]:
    """The shipped documents of a split, each {"id", "kind" ("prose" | "code"), "text"}.

    Sources: Python 3.11 documentation reST and standard-library code (PSF License) and the
    Jargon File 4.4.7 (public domain), via Debian packages; see assets/tiny/MODEL_CARD.md.
    "test" documents were held out from the embedded model's training and from "train".
    """
    check_choice("split", split, SPLITS)
    return [dict(d) for d in _documents(split)]


def load_texts(split: str = "train", kind: str | None = None, max_texts: int | None = None) -> list[str]:
    """The shipped texts of a split as strings, optionally only one kind ("prose" or "code").

    max_texts: keep the first N (the order is a fixed shuffle, so a prefix is a fair sample).
    """
    check_choice("kind", kind, KINDS, allow_none=True)
    check_int("max_texts", max_texts, minimum=1, allow_none=True)
    texts = [d["text"] for d in load_documents(split) if kind is None or d["kind"] == kind]
    return texts[:max_texts] if max_texts is not None else texts
