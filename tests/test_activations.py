"""collect_activations and Activations: rows, provenance, padding, BOS, out-of-core storage, errors."""
import gc

import pytest
import torch

from saelab.activations import (Activations, as_rows, collect_activations, d_model_of, gather_rows,
                                iter_row_batches, n_rows)
from saelab.data import SEED_PROMPTS

CTX = 24  # short contexts keep the tests fast


@pytest.fixture(scope="module")
def mixed_texts(train_texts):
    """Texts of very different lengths (short prompts and long shipped texts cut to CTX)."""
    return list(SEED_PROMPTS) + train_texts[:3] + ["x = 1"]


@pytest.fixture(scope="module")
def acts(model, mixed_texts):
    """Layers 0 and 2 of `mixed_texts`, in memory, batches of 3 (so lengths mix inside batches)."""
    return collect_activations(model, mixed_texts, [0, 2], batch_size=3, context_length=CTX, progress=False)


def _tokens(model, text):
    return model.to_tokens(text)[0][:CTX]


def test_shapes_and_row_order(model, mixed_texts, acts):
    lengths = [len(_tokens(model, t)) for t in mixed_texts]
    assert max(lengths) == CTX and min(lengths) < CTX // 2  # the texts really differ in length
    n = sum(n - 1 for n in lengths)                          # every token but BOS
    assert len(acts) == n and acts.layers == (0, 2) and acts.d_model == model.cfg.d_model
    for layer in (0, 2):
        rows = acts[layer].rows
        assert rows.shape == (n, model.cfg.d_model) and rows.dtype == torch.float32
        assert torch.isfinite(rows).all()
    assert acts.text_index.shape == acts.position.shape == acts.token_ids.shape == (n,)
    assert torch.equal(acts.text_index, torch.tensor([t for t, k in enumerate(lengths) for _ in range(k - 1)]))
    assert torch.equal(acts.position, torch.cat([torch.arange(1, k) for k in lengths]))


def test_rows_equal_each_text_run_alone(model, mixed_texts, acts):
    """Row i == run_with_cache on its text alone at its position: checks provenance and the padding mask."""
    for t, text in enumerate(mixed_texts):
        tokens = _tokens(model, text)
        _, cache = model.run_with_cache(tokens.unsqueeze(0))
        mine = acts.text_index == t
        assert torch.equal(acts.token_ids[mine], tokens[acts.position[mine]])
        for layer in (0, 2):
            expected = cache["resid_post", layer][0, acts.position[mine]]
            torch.testing.assert_close(acts[layer].rows[mine], expected, atol=1e-4, rtol=0)


def test_bos_rows_dropped_by_default_and_kept_when_asked(model, mixed_texts, acts):
    assert (acts.position > 0).all()
    with_bos = collect_activations(model, mixed_texts, [0, 2], batch_size=3, context_length=CTX,
                                   exclude_bos=False, progress=False)
    assert len(with_bos) == len(acts) + len(mixed_texts)
    bos = with_bos.position == 0
    assert bos.sum() == len(mixed_texts)
    assert (with_bos.token_ids[bos] == model.tokenizer.bos_token_id).all()
    torch.testing.assert_close(with_bos[2].rows[~bos], acts[2].rows, atol=1e-5, rtol=0)
    # causal attention: BOS at position 0 sees only itself, so its row is the same in every text
    bos_rows = with_bos[2].rows[bos]
    torch.testing.assert_close(bos_rows, bos_rows[:1].expand_as(bos_rows), atol=1e-4, rtol=0)
    assert not torch.allclose(bos_rows[0], acts[2].rows[0], atol=1e-3)


def test_several_layers_in_one_pass_equal_single_layer_collections(model, mixed_texts, acts):
    for layer in (0, 2):
        single = collect_activations(model, mixed_texts, layer, batch_size=5, context_length=CTX, progress=False)
        assert single.layers == (layer,) and single.layer == layer
        torch.testing.assert_close(single.rows, acts[layer].rows, atol=1e-5, rtol=0)
        assert torch.equal(single.text_index, acts.text_index) and torch.equal(single.position, acts.position)


def test_right_padding_even_when_the_tokenizer_pads_left(model, mixed_texts, acts):
    side = model.tokenizer.padding_side
    model.tokenizer.padding_side = "left"      # TransformerLens would then build a left-padding mask
    try:
        left = collect_activations(model, mixed_texts, 2, batch_size=3, context_length=CTX, progress=False)
    finally:
        model.tokenizer.padding_side = side
    torch.testing.assert_close(left.rows, acts[2].rows, atol=1e-5, rtol=0)


def test_negative_layers_count_from_the_last(model, mixed_texts):
    last = collect_activations(model, mixed_texts[:2], -1, context_length=CTX, progress=False)
    assert last.layers == (model.cfg.n_layers - 1,)
    same = collect_activations(model, mixed_texts[:2], [model.cfg.n_layers - 1, -1], context_length=CTX,
                               progress=False)
    assert same.layers == (model.cfg.n_layers - 1,)
    torch.testing.assert_close(last.rows, same.rows)


def test_other_hooks(model, mixed_texts, acts):
    pre = collect_activations(model, mixed_texts, 1, hook="resid_pre", context_length=CTX, progress=False)
    torch.testing.assert_close(pre.rows, acts[0].rows, atol=1e-5, rtol=0)  # resid_pre 1 is resid_post 0
    z = collect_activations(model, mixed_texts[:2], 0, hook="z", context_length=CTX, progress=False)
    assert z.d_model == model.cfg.n_heads * model.cfg.d_head and z.rows.shape[1] == z.d_model
    _, cache = model.run_with_cache(_tokens(model, mixed_texts[0]).unsqueeze(0))
    n0 = int((z.text_index == 0).sum())
    torch.testing.assert_close(z.rows[:n0], cache["z", 0][0, 1:].flatten(1), atol=1e-4, rtol=0)


def test_texts_are_truncated_to_context_length(model, train_texts):
    long_text = max(train_texts, key=len)
    assert len(model.to_tokens(long_text, truncate=False)[0]) > 40
    short = collect_activations(model, [long_text], 0, context_length=40, progress=False)
    assert len(short) == 39 and short.position.max() == 39
    full = collect_activations(model, [long_text], 0, progress=False)
    assert len(full) == model.cfg.n_ctx - 1


def test_max_tokens_keeps_the_first_rows_exactly(model, mixed_texts, acts):
    first_text = int((acts.text_index == 0).sum())
    for max_tokens in (1, first_text + 3, len(acts) - 1, len(acts) + 100):
        part = collect_activations(model, mixed_texts, [0, 2], batch_size=2, context_length=CTX,
                                   max_tokens=max_tokens, progress=False)
        k = min(max_tokens, len(acts))
        assert len(part) == k
        assert torch.equal(part.text_index, acts.text_index[:k]) and torch.equal(part.position, acts.position[:k])
        torch.testing.assert_close(part[2].rows, acts[2].rows[:k], atol=1e-5, rtol=0)


def test_out_of_core_rows_equal_in_memory_and_files_are_removed(model, mixed_texts, acts, tmp_path):
    disk = collect_activations(model, mixed_texts, [0, 2], batch_size=3, context_length=CTX,
                               memory_budget_bytes=1000, cache_dir=tmp_path / "cache", progress=False)
    assert disk.on_disk and not acts.on_disk and "on disk" in repr(disk)
    files = sorted((tmp_path / "cache").rglob("*.f32"))
    assert len(files) == 2 and all(f.stat().st_size == len(acts) * acts.d_model * 4 for f in files)
    index = torch.randperm(len(acts), generator=torch.Generator().manual_seed(0))[:50]
    index = torch.cat([index, index[:5]])                    # repeats come back too
    for layer in (0, 2):
        view = disk[layer]
        torch.testing.assert_close(view.rows, acts[layer].rows, atol=1e-5, rtol=0)
        assert torch.equal(view.gather(index), view.rows[index])
        assert torch.equal(gather_rows(view, index), view.rows[index])
        torch.testing.assert_close(view.gather(index), acts[layer].gather(index), atol=1e-5, rtol=0)
        batches = list(iter_row_batches(view, 7))
        assert [len(b) for b in batches[:-1]] == [7] * (len(batches) - 1)
        assert torch.equal(torch.cat(batches), view.rows)
    assert disk[0].gather(torch.tensor([], dtype=torch.int64)).shape == (0, acts.d_model)
    del disk, view, batches
    gc.collect()
    assert list((tmp_path / "cache").iterdir()) == []


def test_default_temp_dir_is_removed(model, mixed_texts):
    disk = collect_activations(model, mixed_texts[:2], 0, context_length=CTX, memory_budget_bytes=0, progress=False)
    directory = disk._stores[0].directory.path
    assert directory.is_dir() and disk.on_disk
    del disk
    gc.collect()
    assert not directory.exists()


def test_context_and_str_token(model, mixed_texts, acts):
    text = 5                                                  # a long shipped text, cut to CTX
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


def test_rows_work_with_autograd(model, mixed_texts):
    rows = collect_activations(model, mixed_texts[:2], 0, context_length=CTX, progress=False).rows
    layer = torch.nn.Linear(rows.shape[1], 3)
    layer(rows).square().mean().backward()                   # not inference tensors
    assert layer.weight.grad is not None


def test_helpers_accept_activations_and_tensors(acts):
    single = acts[2]
    tensor = single.rows.clone()
    index = torch.tensor([3, 0, 3, len(acts) - 1])
    for data in (single, tensor):
        assert n_rows(data) == len(acts) and d_model_of(data) == acts.d_model
        assert torch.equal(gather_rows(data, index), tensor[index])
        assert torch.equal(torch.cat(list(iter_row_batches(data, 10))), tensor)
        assert torch.equal(as_rows(data), tensor)
    assert torch.equal(single.gather([1, 2]), tensor[[1, 2]])


def test_repr_and_views(acts):
    text = repr(acts)
    assert "layers=[0, 2]" in text and "resid_post" in text and f"n_tokens={len(acts)}" in text
    assert "in memory" in text and "d_model=128" in text
    view = acts[2]
    assert isinstance(view, Activations) and view.layer == 2 and "layer=2" in repr(view)
    assert view.text_index is acts.text_index
    assert acts[-2].layer == 2 and acts.to("cpu")[2].rows.data_ptr() == view.rows.data_ptr()


@pytest.mark.parametrize("kwargs, message", [
    (dict(layers=4), "n_layers=4"),
    (dict(layers=[0, -5]), "n_layers=4"),
    (dict(layers="0"), "layers: expected an int"),
    (dict(layers=[]), "at least one layer"),
    (dict(layers=0, hook="resid_banana"), "unknown hook 'resid_banana'"),
    (dict(layers=0, hook="pattern"), "not one row per token"),
    (dict(layers=0, texts=[]), "texts: expected a non-empty list"),
    (dict(layers=0, texts="one string"), "wrap it in a list"),
    (dict(layers=0, texts=["fine", 3]), "texts[1]: expected a str"),
    (dict(layers=0, texts=["fine", ""]), "texts[1]"),
    (dict(layers=0, batch_size=0), "batch_size: expected an int >= 1"),
    (dict(layers=0, context_length=10_000), "n_ctx (256)"),
    (dict(layers=0, max_tokens=0), "max_tokens"),
    (dict(layers=0, exclude_bos="no"), "exclude_bos"),
])
def test_bad_arguments_say_what_is_wrong(model, kwargs, message):
    kwargs = dict(dict(texts=["hello world"], progress=False), **kwargs)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        collect_activations(model, **kwargs)


def test_bad_model_and_bad_reads(acts):
    with pytest.raises(ValueError, match="model: expected a TransformerLens HookedTransformer"):
        collect_activations("gpt2", ["hi"], 0)
    with pytest.raises(ValueError, match=r"layers \[0, 2\].*acts\[0\]"):
        acts.rows
    with pytest.raises(ValueError, match=r"single-layer Activations.*layers \[0, 2\]"):
        n_rows(acts)
    with pytest.raises(ValueError, match="was not collected"):
        acts[1]
    with pytest.raises(ValueError, match=r"index: row numbers must be in \[0, "):
        acts[0].gather(torch.tensor([0, len(acts)]))
    with pytest.raises(ValueError, match="1-D integer tensor"):
        gather_rows(acts[0], torch.tensor([0.5]))
    with pytest.raises(ValueError, match=r"float tensor \[n_tokens, d_model\]"):
        n_rows(torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="batch_size"):
        iter_row_batches(acts[0], 0)
    with pytest.raises(ValueError, match="batch_size"):
        acts[0].iter_rows(-1)
    with pytest.raises(ValueError, match=r"row: expected an int in \[0, "):
        acts.context(len(acts))


def test_repeated_texts_run_once_and_give_identical_rows(model, monkeypatch):
    texts = ["The capital of France is Paris.", "I am so happy today!"] * 3
    calls = []
    original = model.run_with_hooks

    def counting(tokens, *args, **kwargs):
        calls.append(tokens.shape[0])
        return original(tokens, *args, **kwargs)

    monkeypatch.setattr(model, "run_with_hooks", counting)
    acts = collect_activations(model, texts, [1], batch_size=16, progress=False)[1]
    assert calls[1:] == [2]  # after the one-token width probe: one batch of the two distinct texts
    rows = acts.rows
    for t in range(2, len(texts)):
        same = acts.text_index == t
        earlier = acts.text_index == t % 2
        assert torch.equal(rows[same], rows[earlier])
    assert torch.equal(acts.text_index.unique(), torch.arange(len(texts)))
