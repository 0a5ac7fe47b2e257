"""The shipped texts and the lab's prompts."""
import ast
import gzip
from pathlib import Path

import pytest

from saelab import data


def test_splits_are_disjoint_and_sized():
    train, test = data.load_documents("train"), data.load_documents("test")
    assert not {d["id"] for d in train} & {d["id"] for d in test}
    assert not {d["text"] for d in train} & {d["text"] for d in test}
    total = sum(len(d["text"]) for d in train + test)
    assert 0.7e6 < total < 1.5e6
    assert len(train) > 500 and len(test) > 100


def test_both_kinds_in_both_splits():
    for split in data.SPLITS:
        prose, code = data.load_texts(split, kind="prose"), data.load_texts(split, kind="code")
        assert len(prose) > 20 and len(code) > 20
        assert sum("def " in t or "import " in t for t in code) > len(code) / 2
        assert len(prose) + len(code) == len(data.load_texts(split))


def test_max_texts_is_a_prefix():
    assert data.load_texts("train", max_texts=5) == data.load_texts("train")[:5]


def _original_notebook() -> str | None:
    """The original notebook's text, where this checkout has it (the lab's shared reference folder)."""
    root = Path(__file__).resolve().parents[1]
    for folder in (root.parent / "shared", root / "shared", root.parent.parent / "shared"):
        path = folder / "reference" / "lab_c4_seed.txt"
        if path.is_file():
            return path.read_text(encoding="utf-8")
    return None


def _literal_after(text: str, marker: str):
    """The Python literal ([...] or {...}) assigned after `marker` in the notebook's text."""
    start = text.index(marker) + len(marker)
    opening = text[start:].lstrip()[0]
    closing = {"[": "]", "{": "}"}[opening]
    body = text[text.index(opening, start):]
    return ast.literal_eval(body[:body.index(closing) + 1])


def test_notebook_prompts_are_the_original_notebooks():
    text = _original_notebook()
    if text is None:
        pytest.skip("the original notebook (shared/reference/lab_c4_seed.txt) is not in this checkout")
    assert data.NOTEBOOK_PROMPTS == tuple(_literal_after(text, "prompts ="))
    assert data.TEST_PROMPTS == _literal_after(text, "test_prompts =")


def test_notebook_prompts_give_rows_on_the_tiny_model(model):
    """Each prompt is its own text with tokens after BOS; the layer comparison's test prompts are not
    training prompts."""
    assert len(set(data.NOTEBOOK_PROMPTS)) == len(data.NOTEBOOK_PROMPTS) == 5
    assert not set(data.TEST_PROMPTS.values()) & set(data.NOTEBOOK_PROMPTS)
    for prompt in data.NOTEBOOK_PROMPTS + tuple(data.TEST_PROMPTS.values()):
        assert model.to_tokens(prompt).shape[1] > 2, prompt
    assert sum("def " in p for p in data.NOTEBOOK_PROMPTS) == 1 and data.TEST_PROMPTS["Code"].startswith("def ")


@pytest.mark.parametrize("kwargs, message", [
    ({"split": "validation"}, r"split: expected one of \['train', 'test'\], got str 'validation'"),
    ({"kind": "poetry"}, r"kind: expected one of \['prose', 'code'\] or None, got str 'poetry'"),
    ({"max_texts": 0}, r"max_texts: expected an int >= 1 or None, got int 0"),
    ({"max_texts": True}, r"max_texts: expected an int >= 1 or None, got bool True"),   # accepted before issue 18
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.load_texts(**kwargs)


def test_missing_and_corrupt_texts_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "TEXTS_DIR", tmp_path)
    data._documents.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match=r"missing: .*train\.jsonl\.gz"):
            data.load_texts("train")
        (tmp_path / "test.jsonl.gz").write_bytes(b"not gzip")
        with pytest.raises(RuntimeError, match=r"test\.jsonl\.gz could not be read"):
            data.load_texts("test")
        with gzip.open(tmp_path / "train.jsonl.gz", "wt") as f:
            f.write('{"id": 1, "text": \n')
        data._documents.cache_clear()
        with pytest.raises(RuntimeError, match=r"train\.jsonl\.gz could not be read"):
            data.load_texts("train")
    finally:
        data._documents.cache_clear()
