"""Feature inspection: top activating examples, logit effects and the standalone HTML card."""
import re

import pytest
import torch

import pandas as pd

from saelab.activations.collect import collect_activations
from saelab.features.cards import (LogitEffects, TopExamples, feature_card, feature_logit_effects, top_activating_examples,
                             visible_token)
from saelab.sae.tied import TiedSAE
from saelab.training.trainer import train_sae
from saelab.utils import token_text

TRICKY = ["<script>alert('x')</script> & <b>bold</b>\n\n  indented    spaces\tand tabs",
          "def f(x):\n    return x < 1 and \"q\" > 'p'\n"]


@pytest.fixture(scope="module")
def acts(model, train_texts):
    return collect_activations(model, train_texts[:6] + TRICKY, 2, progress=False)   # every token, TRICKY's too


@pytest.fixture(scope="module")
def sae(acts):
    width = acts.rows.shape[1]
    return train_sae(TiedSAE(width, 4 * width, seed=0), acts, sparsity_coef=1e-3, steps=30, progress=False).sae


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
    assert len(tricky_rows) > 0                       # the tricky texts gave rows (they come after six long texts)
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
    dead = TiedSAE(rows.shape[1], 8, seed=0)
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
    assert promoted["token"].tolist() == [token_text(model.tokenizer, i) for i in promoted["token_id"]]
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
        top_activating_examples(sae, torch.empty(0, sae.d_in), 0)
    with pytest.raises(ValueError, match="sae"):
        top_activating_examples("sae", acts, 0)
    with pytest.raises(ValueError, match="k"):
        top_activating_examples(sae, acts, 0, k=0)


# --------------------------------------------------------------------------- token display

BYTE_TEXT = "snow \u2603 and \x18 bell"  # the snowman is three byte tokens in tiny; \x18 a control character


def test_token_text_shows_lone_bytes_as_hex_for_every_token_of_the_vocabulary(model):
    tokenizer = model.tokenizer
    ids = model.to_tokens(BYTE_TEXT, prepend_bos=False)[0].tolist()
    assert [token_text(tokenizer, i) for i in ids][3:6] == ["<0xE2>", "<0x98>", "<0x83>"]
    assert all(tokenizer.decode([i]) == "\ufffd" for i in ids[3:6])  # what a plain decode shows
    assert not any("\ufffd" in token_text(tokenizer, i) for i in range(model.cfg.d_vocab))
    assert token_text(tokenizer, ids[1]) == tokenizer.decode([ids[1]])  # whole characters unchanged
    assert token_text(None, 42) == "<42>"


def test_visible_token_escapes_control_and_invisible_characters():
    assert visible_token("\x18") == "\\x18" and visible_token("a\u200bb") == "a\\u200bb"
    assert visible_token("\r\n") == "⏎" and visible_token("\t") == "⇥" and visible_token(" \x7f") == " \\x7f"
    assert visible_token("<0x98>") == "<0x98>" and visible_token("é") == "é"


def test_byte_and_control_tokens_display_alike_in_logit_lists_top_examples_and_cards(model, sae):
    table = pd.DataFrame([("promotes", 1, 226, "<0x83>", 2.0), ("promotes", 2, 213, "\x18", 1.0),
                          ("promotes", 3, 5, "\n", 0.5), ("suppresses", 1, 7, " a", -1.0)],
                         columns=["kind", "rank", "token_id", "token", "effect"])
    effects = LogitEffects(feature=0, table=table)
    for shown in (effects.summary(), repr(effects), effects._repr_html_()):
        assert "<0x83>" in shown or "&lt;0x83&gt;" in shown
        assert "\\x18" in shown and "\x18" not in shown and "⏎" in shown
    examples = TopExamples(feature=0, table=pd.DataFrame([(0, 0, 4, "\x18", 1.5, "snow «\\x18»")],
                                                         columns=["row", "text_index", "position", "token",
                                                                  "activation", "context"]),
                           contexts=[(["snow", "\x18"], 1, [None, 1.5])], n_active=1, n_tokens=10)
    assert "\\x18" in repr(examples) and "\x18" not in repr(examples)
    assert "\\x18" in examples._repr_html_() and "\x18" not in examples._repr_html_()


def test_activations_name_byte_tokens_like_the_logit_lists(model):
    acts = collect_activations(model, [BYTE_TEXT], 0, progress=False)
    shown = [acts.str_token(r) for r in range(len(acts))]
    assert "\ufffd" not in "".join(shown)
    assert shown[3:6] == ["<0xE2>", "<0x98>", "<0x83>"]


def test_ties_are_broken_by_id(model):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    sae = TiedSAE(8, 16, seed=0)
    rows = torch.randn(1, 8).repeat(12, 1)  # twelve equal rows: every activation ties
    feature = int(sae.encode(rows[:1])[0].argmax())
    assert top_activating_examples(sae, rows, feature, k=5).table["row"].tolist() == [0, 1, 2, 3, 4]
    cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_head=4, n_heads=2, d_mlp=16, d_vocab=20,
                                  act_fn="relu", normalization_type="LNPre", seed=0)
    tied_model = HookedTransformer(cfg)
    with torch.no_grad():
        # small integers: every effect is computed exactly, whatever order the matmul sums in, so
        # tokens 0 and 10..19 tie exactly
        g = torch.Generator().manual_seed(0)
        sae.encoder.weight.copy_(torch.randint(-3, 4, (16, 8), generator=g).float())
        tied_model.W_U.copy_(torch.randint(-3, 4, (8, 20), generator=g).float())
        tied_model.W_U[:, 10:] = tied_model.W_U[:, :1]
    table = feature_logit_effects(tied_model, sae, 3, k=20).table
    for kind in ("promotes", "suppresses"):
        ids = table[table["kind"] == kind]["token_id"].tolist()
        group = [i for i in ids if i == 0 or i >= 10]
        assert group == sorted(group) and len(group) == 11


def test_match_features_finds_each_decoder_row_in_a_permuted_copy():
    import saelab
    from saelab.features.matching import match_features

    a = TiedSAE(8, 40, seed=0)
    b = TiedSAE(8, 40, seed=1)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        b.encoder.weight.copy_(3 * a.encoder.weight[perm])  # same directions, other order and scale
    result = match_features(a, b, chunk=7)
    assert saelab.match_features is match_features and isinstance(result, saelab.FeatureMatches)
    table = result.table.sort_values("feature")
    assert table["match"].tolist() == torch.argsort(perm).tolist()
    assert table["cosine"].tolist() == pytest.approx([1.0] * 40, abs=1e-6)
    assert list(result.table.columns) == ["feature", "match", "cosine"] and "decoder cosine" in result.summary()
    with pytest.raises(ValueError, match=r"b: expected an SAE with d_in = 8"):
        match_features(a, TiedSAE(4, 8, seed=0))
    with pytest.raises(ValueError, match=r"a: expected a saelab TiedSAE"):
        match_features("a", b)


def test_match_features_breaks_ties_by_the_lowest_id():
    """b holds a's direction three times (ids 2, 5 and 7): the match is 2, by an explicit rule rather
    than by whichever index `max` returns (unspecified on CUDA)."""
    from saelab.features.matching import match_features
    a, b = TiedSAE(8, 4, seed=0), TiedSAE(8, 10, seed=1)
    with torch.no_grad():
        for i in (7, 2, 5):
            b.encoder.weight[i] = a.encoder.weight[0] * 3.0
    table = match_features(a, b, chunk=1).table.set_index("feature")
    assert table.loc[0, "match"] == 2 and table.loc[0, "cosine"] == pytest.approx(1.0)


def test_a_strongly_shaded_newline_is_drawn_dark_and_a_faint_one_grey():
    from saelab.features.cards import token_span
    strong, faint = token_span("\n", 1.0, 1.0, True), token_span("\n", 0.1, 1.0, False)
    assert "⏎" in strong and "⏎" in faint
    assert "#999" not in strong and "color: #4a1300" in strong   # dark on orange, not grey on orange
    assert "color: #999" in faint


def test_the_location_column_of_top_examples_does_not_wrap(sae, acts, dense):
    import re
    html = top_activating_examples(sae, acts, _a_feature(dense), k=3).html()
    cells = re.findall(r"<td style='([^']*)'>text \d+, pos \d+</td>", html)
    assert len(cells) == 3 and all("white-space:nowrap" in style for style in cells)
