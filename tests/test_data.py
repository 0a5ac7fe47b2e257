"""The shipped texts and the lab's prompts."""
import gzip

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


def test_seed_prompts():
    assert len(data.SEED_PROMPTS) == 5 and data.SEED_PROMPTS[0] == "The capital of France is Paris."
    assert set(data.TEST_PROMPTS) == {"Code", "Question", "Emotion", "Factual"}


@pytest.mark.parametrize("kwargs, message", [
    ({"split": "validation"}, r"split: expected one of \('train', 'test'\), got 'validation'"),
    ({"kind": "poetry"}, r"kind: expected one of \('prose', 'code'\) or None, got 'poetry'"),
    ({"max_texts": 0}, r"max_texts: expected a positive int"),
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
