"""Feature inspection: top activating examples, logit effects and the standalone HTML card."""
import re

import pytest
import torch

from saelab.activations import collect_activations
from saelab.inspect import feature_card, feature_logit_effects, top_activating_examples, visible_token
from saelab.sae import TiedSAE
from saelab.train import train_sae

TRICKY = ["<script>alert('x')</script> & <b>bold</b>\n\n  indented    spaces\tand tabs",
          "def f(x):\n    return x < 1 and \"q\" > 'p'\n"]


@pytest.fixture(scope="module")
def acts(model, train_texts):
    return collect_activations(model, train_texts[:6] + TRICKY, 2, max_tokens=1500, progress=False)


@pytest.fixture(scope="module")
def sae(acts):
    return train_sae(TiedSAE(acts.d_model, 4 * acts.d_model, seed=0), acts, sparsity_coef=1e-3, steps=30,
                     progress=False).sae


@pytest.fixture(scope="module")
def dense(sae, acts):
    with torch.no_grad():
        return sae.encode(acts.rows)  # [n_tokens, n_features]


def _a_feature(dense, rank=0):
    """A feature that fires on some but not all tokens (the rank-th most active such)."""
    density = (dense > 0).float().mean(0)
    ok = torch.nonzero((density > 0.01) & (density < 0.5)).flatten()
    return int(ok[torch.argsort(density[ok], descending=True)][rank])


def test_top_examples_are_the_argmax_rows(sae, acts, dense):
    feature = _a_feature(dense)
    result = top_activating_examples(sae, acts, feature, k=7, context=4)
    column = dense[:, feature]
    t = result.table
    assert list(t.columns) == ["row", "text_index", "position", "token", "activation", "context"]
    assert len(t) == 7
    torch.testing.assert_close(torch.tensor(t["activation"].to_list()), torch.topk(column, 7).values,
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(column[torch.tensor(t["row"].to_list())], torch.tensor(t["activation"].to_list()),
                               rtol=1e-5, atol=1e-5)
    assert list(t["activation"]) == sorted(t["activation"], reverse=True)
    assert result.n_active == int((column > 0).sum()) and result.n_tokens == len(acts)
    for example, (tokens, index, values) in zip(t.itertuples(), result.contexts):
        assert tokens[index] == example.token == acts.str_token(example.row)
        assert example.text_index == int(acts.text_index[example.row])
        assert f"«{visible_token(example.token)}»" in example.context
        assert len(tokens) <= 4 + 1 + 4
        # neighbours are shaded by their own activation of the feature (None where there is no row)
        for offset, value in enumerate(values):
            row = example.row + offset - index
            if value is not None:
                assert value == pytest.approx(float(column[row]), abs=1e-5)
        if example.position == 1:
            assert values[index - 1] is None  # the BOS token has no row
    # a feature firing on fewer than k tokens gives only those tokens
    count = int((column > 0).sum())
    assert len(top_activating_examples(sae, acts, feature, k=count + 3).table) == count


def test_top_examples_html_is_escaped_and_shows_whitespace(sae, acts, dense):
    tricky_rows = torch.nonzero(acts.text_index >= 6).flatten()
    best = int(dense[tricky_rows].sum(0).argmax())  # a feature that fires on the tricky texts
    result = top_activating_examples(sae, acts, best, k=50, context=8)
    html = result._repr_html_()
    assert "<script" not in html and "</script" not in html  # the texts hold "<script>...</script>"
    assert "&lt;" in html
    assert "⏎" in html or "·" in html
    assert "rgba(" in html and "outline" in html
    assert visible_token("\n") == "⏎" and visible_token("  ") == "··" and visible_token(" word") == " word"


def test_top_examples_on_a_tensor_and_for_a_dead_feature(sae, acts, dense):
    rows = acts.rows
    feature = _a_feature(dense)
    result = top_activating_examples(sae, rows, feature, k=3)
    assert result.table["row"].tolist() == top_activating_examples(sae, acts, feature, k=3).table["row"].tolist()
    assert result.table["context"].isna().all()
    assert "Feature" in result._repr_html_()
    dead = TiedSAE(acts.d_model, 8, seed=0)
    with torch.no_grad():
        dead.encoder.bias.fill_(-1e4)
    empty = top_activating_examples(dead, acts, 0)
    assert empty.table.empty and "never fires" in repr(empty) and "never fires" in empty._repr_html_()


def test_logit_effects_follow_the_decoder_direction_through_the_unembedding(model, sae):
    result = feature_logit_effects(model, sae, 5, k=4)
    assert model.cfg.normalization_type == "LNPre" and not result.scaled_by_ln
    effects = sae.W_dec[5].detach() @ model.W_U.detach()
    t = result.table
    promoted, suppressed = t[t["kind"] == "promotes"], t[t["kind"] == "suppresses"]
    assert promoted["token_id"].tolist() == torch.topk(effects, 4).indices.tolist()
    assert suppressed["token_id"].tolist() == torch.topk(-effects, 4).indices.tolist()
    assert promoted["effect"].to_list() == pytest.approx(torch.topk(effects, 4).values.tolist(), rel=1e-4)
    assert promoted["token"].iloc[0].startswith(model.tokenizer.decode([int(promoted["token_id"].iloc[0])]))
    # ids from a table (numpy ints) work as feature ids
    assert feature_logit_effects(model, sae, t["token_id"].iloc[0] * 0 + 5, k=4).table.equals(t)
    assert "promotes" in result._repr_html_() and "suppresses" in repr(result)


def test_logit_effects_apply_the_final_layer_norm_scale_when_not_folded():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_head=4, n_heads=2, d_mlp=16, d_vocab=20,
                                  act_fn="relu", normalization_type="LN", seed=0)
    model = HookedTransformer(cfg)
    with torch.no_grad():
        model.ln_final.w.copy_(torch.linspace(-2, 2, 8))
    sae = TiedSAE(8, 16, seed=0)
    result = feature_logit_effects(model, sae, 3, k=20)
    expected = (sae.W_dec[3] * model.ln_final.w) @ model.W_U
    got = result.table[result.table["kind"] == "promotes"].set_index("token_id")["effect"]
    assert result.scaled_by_ln
    assert got.to_list() == pytest.approx(expected[got.index.to_list()].tolist(), rel=1e-5)
    assert result.table["token"].iloc[0].startswith("<")  # no tokenizer: ids shown as <id>


def test_feature_card_saves_a_standalone_page(model, sae, acts, dense, tmp_path):
    feature = _a_feature(dense)
    card = feature_card(model, sae, acts, feature, k=5)
    column = dense[:, feature]
    assert card.n_active == int((column > 0).sum())
    assert card.density == pytest.approx(float((column > 0).float().mean()))
    assert card.max_activation == pytest.approx(float(column.max()), rel=1e-5)
    assert len(card.examples.table) == 5 and len(card.logit_effects.table) == 10
    path = card.save(tmp_path / "card.html")
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "charset='utf-8'" in page
    assert "data:image/png;base64," in page
    assert not re.search(r"(src|href)\s*=\s*['\"]?\s*(https?:)?//", page, re.I)  # nothing fetched from anywhere
    assert not re.search(r"url\(|@import|<script|<link|<iframe", page, re.I)
    assert card._repr_html_() in page and f"Feature {feature}" in page
    with pytest.raises(ValueError, match="html"):
        card.save(tmp_path / "card.txt")


@pytest.mark.parametrize("feature", [-1, 512, 2.0, None, True])
def test_feature_out_of_range_is_rejected(model, sae, acts, feature):
    with pytest.raises(ValueError, match="feature"):
        top_activating_examples(sae, acts, feature)
    with pytest.raises(ValueError, match="feature"):
        feature_logit_effects(model, sae, feature)


def test_inspection_rejects_mismatched_or_empty_inputs(model, sae, acts):
    with pytest.raises(ValueError, match="d_model"):
        top_activating_examples(TiedSAE(16, 32), acts, 0)
    with pytest.raises(ValueError, match="d_model"):
        feature_logit_effects(model, TiedSAE(16, 32), 0)
    with pytest.raises(ValueError, match="d_model"):
        feature_card(model, TiedSAE(16, 32), torch.randn(5, 16), 0)
    with pytest.raises(ValueError, match="at least one row"):
        top_activating_examples(sae, torch.empty(0, acts.d_model), 0)
    with pytest.raises(ValueError, match="sae"):
        top_activating_examples("sae", acts, 0)
    with pytest.raises(ValueError, match="k"):
        top_activating_examples(sae, acts, 0, k=0)
