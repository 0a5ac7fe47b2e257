"""Steering and ablation on tiny with the shipped reference SAE: the mechanics exactly, and the measured
effects of a feature picked by the lab's rule (numbers recorded in benchmarks/RESULTS.md)."""
import pytest
import torch

import saelab
from saelab.features.ablation import feature_ablation
from saelab.features.steering import pick_features, steer, steering_effect

PROMPTS = ["def main():\n", "The file is", "In the beginning"]


@pytest.fixture(scope="module")
def held_out(model, ref_sae):
    return saelab.collect_activations(model, saelab.load_texts("test", max_texts=60), [ref_sae.layer],
                                      progress=False)[ref_sae.layer]


@pytest.fixture(scope="module")
def picked(model, ref_sae, held_out):
    return pick_features(model, ref_sae, saelab.evaluate(ref_sae, held_out).feature_density, n=2)


def _resid(model, hook, tokens):
    return model.run_with_cache(tokens, names_filter=hook)[1][hook][0]


def test_steer_adds_alpha_times_the_raw_decoder_row_everywhere_but_bos(model, ref_sae):
    tokens, hook = model.to_tokens("def add(a, b):"), ref_sae.hook_name
    clean = _resid(model, hook, tokens)
    with steer(model, ref_sae, 5, alpha=3.0) as vector:
        steered = _resid(model, hook, tokens)
    assert torch.allclose(vector, 3.0 * ref_sae.W_dec[5])
    assert torch.equal(steered[0], clean[0])                              # BOS untouched
    assert torch.allclose(steered[1:] - clean[1:], vector.expand(len(clean) - 1, -1), atol=1e-5)
    with steer(model, ref_sae, 5, alpha=3.0, positions="last"):
        last = _resid(model, hook, tokens)
    assert torch.equal(last[:-1], clean[:-1]) and torch.allclose(last[-1] - clean[-1], vector, atol=1e-5)


def test_steer_uses_input_scale_through_w_dec():
    sae = saelab.TiedSAE(128, 256, seed=0)
    sae.input_scale = 7.0
    model = saelab.load_model("tiny", device="cpu")
    with steer(model, sae, 3, 1.0, hook_name="blocks.1.hook_resid_post") as vector:
        pass
    assert torch.allclose(vector, 7.0 * sae.encoder.weight[3].detach())


def test_the_hook_is_removed_after_an_exception_and_other_hooks_stay(model, ref_sae):
    tokens = model.to_tokens("The file is")
    clean = model(tokens)
    calls = []
    model.hook_dict["blocks.0.hook_resid_post"].add_hook(lambda act, hook: calls.append(1))
    try:
        with pytest.raises(KeyboardInterrupt):
            with steer(model, ref_sae, 5, alpha=50.0):
                assert not torch.allclose(model(tokens), clean)
                raise KeyboardInterrupt
        assert torch.allclose(model(tokens), clean)
        assert len(model.hook_dict[ref_sae.hook_name].fwd_hooks) == 0
        assert len(calls) == 2                                            # the other hook ran both times
    finally:
        model.reset_hooks()


def test_alpha_scale_max_counts_in_the_feature_top_activation(model, ref_sae, held_out, picked):
    feature = picked[0]
    top = float(saelab.top_activating_examples(ref_sae, held_out, feature, k=1).table.activation[0])
    with steer(model, ref_sae, feature, 2.0, alpha_scale="max", activations=held_out) as vector:
        pass
    assert torch.allclose(vector, 2.0 * top * ref_sae.W_dec[feature], rtol=1e-5)


def test_steer_checks_its_arguments_at_the_door(model, ref_sae):
    with pytest.raises(ValueError, match="alpha_scale='max'"):
        with steer(model, ref_sae, 5, 1.0, alpha_scale="max"):
            pass
    with pytest.raises(ValueError, match="positions: expected one of"):
        with steer(model, ref_sae, 5, 1.0, positions="first"):
            pass
    with pytest.raises(ValueError, match="hook_name: expected a hook of this model"):
        with steer(model, saelab.TiedSAE(128, 256, seed=0), 5, 1.0):
            pass
    assert not any(point.fwd_hooks for point in model.hook_dict.values())


def test_steering_the_picked_feature_raises_its_top_tokens_by_a_margin(model, ref_sae, held_out, picked):
    result = steering_effect(model, ref_sae, picked[0], PROMPTS, alphas=[1, 2], alpha_scale="max",
                             activations=held_out, n_new=6)
    assert list(result.table.alpha.unique()) == [0.0, 1.0, 2.0]
    assert (result.table[result.table.alpha == 0].delta_logprob_top == 0).all()
    assert result.mean_delta(1.0) > 3.0          # measured on tiny: 7.82 nats at 1x, 9.74 at 2x its top activation
    assert result.mean_delta(2.0) > result.mean_delta(1.0)
    unsteered = model.generate(model.to_tokens(PROMPTS[1]), max_new_tokens=6, do_sample=False, verbose=False)
    want = model.to_string(unsteered[0, model.to_tokens(PROMPTS[1]).shape[1]:])
    assert result.table[(result.table.alpha == 0) & (result.table.prompt_index == 1)].greedy.item() == want
    html = result._repr_html_()
    assert "class='steered'" in html and "<script" not in html
    again = steering_effect(model, ref_sae, picked[0], PROMPTS, alphas=[1, 2], alpha_scale="max",
                            activations=held_out, n_new=6)
    assert again.table.sampled.tolist() == result.table.sampled.tolist()      # seeded


def test_ablating_the_picked_feature_costs_loss_where_it_fires_and_about_none_elsewhere(model, ref_sae, picked):
    texts = saelab.load_texts("test", max_texts=20)
    result = feature_ablation(model, ref_sae, texts, picked[0], progress=False)
    assert result.firing.sum() > 50
    assert result.mean_delta_firing > 0.1                          # measured: 0.277 nats on 230 tokens
    assert abs(result.mean_delta_silent) < 0.01                    # measured: 0.00017 nats
    assert result.mean_delta_firing > 50 * abs(result.mean_delta_silent)
    by_text = result.table.groupby("text_index")
    never = [t for t, rows in by_text if (rows.activation == 0).all()]
    assert never and all((result.table[result.table.text_index == t].delta_loss.abs() < 1e-5).all() for t in never)
    assert result.top(3).delta_loss.is_monotonic_decreasing and "<span" in result.html()


def test_pick_features_counts_only_the_tokens_in_vocab(model, ref_sae, held_out):
    density = saelab.evaluate(ref_sae, held_out).feature_density
    token = int(held_out.token_ids[0])
    (best,) = pick_features(model, ref_sae, density, n=1, vocab=[token])
    alive = torch.nonzero((density > 0.002) & (density < 0.05)).flatten()
    effects = (ref_sae.W_dec[alive] @ model.W_U[:, token]).detach()
    assert best == int(alive[effects.argmax()])
    assert best in alive.tolist()
    with pytest.raises(ValueError, match="vocab: expected token ids"):
        pick_features(model, ref_sae, density, vocab=[model.cfg.d_vocab])
