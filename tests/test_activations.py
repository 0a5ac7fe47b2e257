"""Activations and the row readers: views, provenance, repr, reading rows of both kinds, errors."""
import pytest
import torch

from saelab.activations.rows import Activations, find_nonfinite_row, gather_rows, iter_row_batches, n_rows
from saelab.validate import check_rows, row_width
from saelab.activations.collect import collect_activations
from test_collect import _tokens, acts, mixed_texts  # noqa: F401  (the same fixtures; tests/ is on sys.path)


def test_context_and_str_token(model, mixed_texts, acts):
    text = 5                                                  # a long shipped text, in windows of CTX
    str_tokens = model.to_str_tokens(_tokens(model, mixed_texts[text]))
    rows = torch.nonzero(acts.text_index == text).flatten()
    row = int(rows[10])
    pos = int(acts.position[row])
    tokens, at = acts.context(row, before=3, after=2)
    assert tokens == str_tokens[pos - 3:pos + 3] and at == 3 and tokens[at] == acts.str_token(row)
    first = int(rows[0])                                      # position 1: the excluded BOS is still context
    tokens, at = acts.context(first, before=8, after=1)
    assert tokens == str_tokens[:3] and at == 1 and tokens[0] == model.tokenizer.bos_token
    last = int(rows[-1])
    tokens, at = acts[2].context(last, before=0, after=8)
    assert tokens == [str_tokens[-1]] and at == 0


def test_helpers_accept_activations_and_tensors(acts):
    single = acts[2]
    tensor = single.rows.clone()
    index = torch.tensor([3, 0, 3, len(acts) - 1])
    for data in (single, tensor):
        assert n_rows(data) == len(acts) and row_width(data) == acts.width
        assert torch.equal(gather_rows(data, index), tensor[index])
        assert torch.equal(torch.cat(list(iter_row_batches(data, 10))), tensor)
    assert torch.equal(single.gather([1, 2]), tensor[[1, 2]])


def test_repr_and_views(acts):
    text = repr(acts)
    assert "layers=[0, 2]" in text and "resid_post" in text and f"n_tokens={len(acts)}" in text
    assert "in memory" in text and "width=128" in text
    view = acts[2]
    assert isinstance(view, Activations) and view.layer == 2 and "layer=2" in repr(view)
    assert view.text_index is acts.text_index
    assert acts[-2].layer == 2 and acts.to("cpu")[2].rows.data_ptr() == view.rows.data_ptr()


def test_bad_model_and_bad_reads(acts):
    with pytest.raises(ValueError, match="model: expected a TransformerLens HookedTransformer"):
        collect_activations("gpt2", ["hi"], 0)
    with pytest.raises(ValueError, match=r"layers \[0, 2\].*acts\[0\]"):
        acts.rows
    with pytest.raises(ValueError, match=r"single-layer Activations.*layers \[0, 2\]"):
        check_rows("activations", acts)
    with pytest.raises(ValueError, match="was not collected"):
        acts[1]
    with pytest.raises(ValueError, match=r"index: row numbers must be in \[0, "):
        acts[0].gather(torch.tensor([0, len(acts)]))
    with pytest.raises(ValueError, match="1-D integer tensor"):
        acts[0].gather(torch.tensor([0.5]))
    with pytest.raises(ValueError, match=r"float tensor \[n_tokens, d_model\]"):
        check_rows("activations", torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="batch_size"):
        acts[0].iter_rows(-1)
    with pytest.raises(ValueError, match=r"row: expected an int in \[0, "):
        acts.context(len(acts))


def test_find_nonfinite_row_reads_in_batches_and_names_the_first(acts):
    rows = acts[2].rows.clone()
    assert find_nonfinite_row(acts[2]) is None and find_nonfinite_row(rows, batch_size=7) is None
    rows[40, 3], rows[90, 0] = float("inf"), float("nan")
    assert find_nonfinite_row(rows, batch_size=7) == 40
    assert find_nonfinite_row(rows[50:], batch_size=1000) == 40
    with pytest.raises(ValueError, match=r"holds layers \[0, 2\]; select one"):
        find_nonfinite_row(acts)

