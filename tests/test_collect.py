"""collect_activations: rows, provenance, padding, BOS, long texts in windows, out-of-core storage, errors."""
import gc
import os

import pytest
import torch

from saelab.activations.rows import gather_rows, iter_row_batches
from saelab.activations.collect import TruncationWarning, collect_activations
from saelab.data import NOTEBOOK_PROMPTS

CTX = 24  # short contexts keep the tests fast (and split the shipped texts into many windows)


@pytest.fixture(scope="module")
def mixed_texts(train_texts):
    """Texts of very different lengths (short prompts, and long shipped texts split into CTX-token windows)."""
    return list(NOTEBOOK_PROMPTS) + train_texts[:3] + ["x = 1"]


@pytest.fixture(scope="module")
def acts(model, mixed_texts):
    """Layers 0 and 2 of `mixed_texts`, in memory, batches of 3 (so lengths mix inside batches)."""
    return collect_activations(model, mixed_texts, [0, 2], batch_size=3, context_length=CTX, progress=False)


def _tokens(model, text):
    """The text's tokens, whole (BOS first)."""
    return model.to_tokens(text, truncate=False)[0]


def _rows_run_alone(model, tokens, layer, hook="resid_post", ctx=CTX):
    """[len(tokens) - 1, width]: each non-BOS token's row, from run_with_cache on its window alone (BOS, then
    the next ctx - 1 tokens of the text), as the collector is documented to read a long text."""
    rows = []
    for start in range(1, len(tokens), ctx - 1):
        window = torch.cat([tokens[:1], tokens[start:start + ctx - 1]])
        _, cache = model.run_with_cache(window.unsqueeze(0))
        rows.append(cache[hook, layer][0, 1:].flatten(1))
    return torch.cat(rows)


def test_shapes_and_row_order(model, mixed_texts, acts):
    lengths = [len(_tokens(model, t)) for t in mixed_texts]
    assert max(lengths) > 5 * CTX and min(lengths) < CTX // 2  # the texts really differ in length
    n = sum(n - 1 for n in lengths)                          # every token but BOS
    assert len(acts) == n and acts.layers == (0, 2) and acts.width == model.cfg.d_model
    for layer in (0, 2):
        rows = acts[layer].rows
        assert rows.shape == (n, model.cfg.d_model) and rows.dtype == torch.float32
        assert torch.isfinite(rows).all()
    assert acts.text_index.shape == acts.position.shape == acts.token_ids.shape == (n,)
    assert torch.equal(acts.text_index, torch.tensor([t for t, k in enumerate(lengths) for _ in range(k - 1)]))
    assert torch.equal(acts.position, torch.cat([torch.arange(1, k) for k in lengths]))


def test_rows_equal_each_window_run_alone(model, mixed_texts, acts):
    """Row i == run_with_cache on its window alone: checks the windows, provenance and the padding mask."""
    for t, text in enumerate(mixed_texts):
        tokens = _tokens(model, text)
        mine = acts.text_index == t
        assert torch.equal(acts.position[mine], torch.arange(1, len(tokens)))
        assert torch.equal(acts.token_ids[mine], tokens[1:])
        for layer in (0, 2):
            torch.testing.assert_close(acts[layer].rows[mine], _rows_run_alone(model, tokens, layer), atol=1e-4, rtol=0)


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
    with pytest.raises(ValueError, match=rf"layers: expected distinct layers, got layer {model.cfg.n_layers - 1} twice"):
        collect_activations(model, mixed_texts[:2], [model.cfg.n_layers - 1, -1], progress=False)


def test_other_hooks(model, mixed_texts, acts):
    pre = collect_activations(model, mixed_texts, 1, hook="resid_pre", context_length=CTX, progress=False)
    torch.testing.assert_close(pre.rows, acts[0].rows, atol=1e-5, rtol=0)  # resid_pre 1 is resid_post 0
    z = collect_activations(model, mixed_texts[:2], 0, hook="z", context_length=CTX, progress=False)
    assert z.width == model.cfg.n_heads * model.cfg.d_head and z.rows.shape[1] == z.width
    n0 = int((z.text_index == 0).sum())
    torch.testing.assert_close(z.rows[:n0], _rows_run_alone(model, _tokens(model, mixed_texts[0]), 0, "z"),
                               atol=1e-4, rtol=0)


def test_long_texts_are_split_into_windows_and_nothing_is_dropped(model, train_texts, recwarn):
    long_text = max(train_texts, key=len)
    tokens = _tokens(model, long_text)
    assert len(tokens) > model.cfg.n_ctx                      # two windows at the model's own context
    full = collect_activations(model, [long_text, "short text"], 1, progress=False)[1]
    assert int((full.text_index == 0).sum()) == len(tokens) - 1
    assert torch.equal(full.position[full.text_index == 0], torch.arange(1, len(tokens)))
    torch.testing.assert_close(full.rows[full.text_index == 0], _rows_run_alone(model, tokens, 1, ctx=model.cfg.n_ctx),
                               atol=1e-4, rtol=0)
    tokens_there, at = full.context(model.cfg.n_ctx + 3, before=4, after=0)   # context crosses a window edge
    assert tokens_there == model.to_str_tokens(tokens)[model.cfg.n_ctx:model.cfg.n_ctx + 5] and at == 4
    assert not [w for w in recwarn if issubclass(w.category, TruncationWarning)]


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
    stores = [disk._stores[layer] for layer in (0, 2)]
    assert all(os.fstat(s.fd).st_size == len(acts) * acts.width * 4 and os.fstat(s.fd).st_nlink == 0
               for s in stores)                                # full size, and no name left on disk
    assert list((tmp_path / "cache").iterdir()) == [stores[0].directory.path]
    assert list(stores[0].directory.path.iterdir()) == []
    del stores
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
    assert disk[0].gather(torch.tensor([], dtype=torch.int64)).shape == (0, acts.width)
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


def test_rows_work_with_autograd(model, mixed_texts):
    rows = collect_activations(model, mixed_texts[:2], 0, context_length=CTX, progress=False).rows
    layer = torch.nn.Linear(rows.shape[1], 3)
    layer(rows).square().mean().backward()                   # not inference tensors
    assert layer.weight.grad is not None


@pytest.mark.parametrize("kwargs, message", [
    (dict(layers=4), "n_layers=4"),
    (dict(layers=[0, -5]), "n_layers=4"),
    (dict(layers=[1.0]), r"layers[0]: expected an int (a layer number"),
    (dict(layers="0"), "layers: expected an int"),
    (dict(layers=[]), "at least one layer"),
    (dict(layers=0, hook="resid_banana"), "got 'resid_banana'"),
    (dict(layers=0, hook="pattern"), "which holds attention between positions"),
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
