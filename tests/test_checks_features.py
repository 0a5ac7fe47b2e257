"""Exercises 7 and 8 (steering, ablation): each check accepts the reference, and rejects the stub and
each listed mistake with a message naming it (one test per mistake, as tests/test_checks.py does)."""
import contextlib

import pytest
import torch

from saelab import checks
from saelab.checks import CheckFailed


# --------------------------------------------------------------------------- check_steering (exercise 7)

def make_steer(direction=lambda sae, f: sae.W_dec[f], where=slice(1, None), by_activation=None, safe=True):
    """The reference steering context manager, or one with a single thing changed."""
    @contextlib.contextmanager
    def my_steer(model, sae, feature, alpha):
        d = direction(sae, feature).detach()

        def hook(activation, hook):
            added = torch.zeros_like(activation)
            if by_activation is None:
                added[:, where] = alpha * d
            else:
                added[:, where] = by_activation(sae, activation, feature, alpha, d)[:, where]
            return activation + added

        if safe:
            with model.hooks(fwd_hooks=[(sae.hook_name, hook)]):
                yield
        else:
            model.add_hook(sae.hook_name, hook)
            yield
            model.reset_hooks()
    return my_steer


def stub_steer(model, sae, feature, alpha):
    raise NotImplementedError()


def test_check_steering_accepts_the_reference(model, capsys):
    checks.check_steering(make_steer(), model)
    assert capsys.readouterr().out.startswith("✅ check_steering (exercise 7) passed")
    assert not any(point.fwd_hooks for point in model.hook_dict.values())


@pytest.mark.parametrize("fn, words", [
    (stub_steer, "not implemented yet"),
    (make_steer(where=slice(None)), "BOS token"),
    (make_steer(direction=lambda sae, f: sae.encoder.weight[f]), "forgets sae.input_scale"),
    (make_steer(direction=lambda sae, f: sae.encoder.weight[f] / sae.input_scale), "encoder's row"),
    (make_steer(by_activation=lambda sae, a, f, alpha, d: alpha * sae.encode(a)[..., f, None].expand_as(a)),
     "adds alpha \\* f_i"),
    (make_steer(safe=False), "stayed registered"),
    (make_steer(where=slice(-1, None)), "only the last position"),
    (make_steer(by_activation=lambda sae, a, f, alpha, d: alpha * sae.encode(a)[..., f, None] * d),
     "zero wherever the feature is off"),
])
def test_check_steering_rejects_mistakes(model, fn, words):
    with pytest.raises(CheckFailed, match=words):
        checks.check_steering(fn, model)
    assert not any(point.fwd_hooks for point in model.hook_dict.values())   # the check cleans up


def test_check_steering_wants_a_context_manager(model):
    with pytest.raises(CheckFailed, match="context manager"):
        checks.check_steering(lambda model, sae, feature, alpha: None, model)


# --------------------------------------------------------------------------- check_ablation (exercise 8)

def ablate(sae, x, feature):
    return x - sae.encode(x)[:, feature, None] * sae.W_dec[feature]


def without_feature(sae, x, feature):
    f = sae.encode(x)
    f[:, feature] = 0
    return sae.decode(f)


def with_bias(sae, x, feature):
    one = torch.zeros(len(x), sae.d_sae)
    one[:, feature] = sae.encode(x)[:, feature]
    return x - sae.decode(one)


def pre_activation(sae, x, feature):
    pre = (x / sae.input_scale) @ sae.encoder.weight[feature] + sae.encoder.bias[feature]
    return x - pre[:, None] * sae.W_dec[feature]


def unscaled(sae, x, feature):
    return x - sae.encode(x)[:, feature, None] * sae.encoder.weight[feature]


def every_feature(sae, x, feature):
    return x - sae.encode(x) @ sae.W_dec


def stub_ablate(sae, x, feature):
    raise NotImplementedError()


def test_check_ablation_accepts_the_reference(capsys):
    checks.check_ablation(ablate)
    assert capsys.readouterr().out.startswith("✅ check_ablation (exercise 8) passed")


@pytest.mark.parametrize("fn, words", [
    (stub_ablate, "not implemented yet"),
    (without_feature, "drops the SAE's error term"),
    (lambda sae, x, feature: sae.decode(sae.encode(x)), "this is the SAE's reconstruction"),
    (with_bias, "decoder bias"),
    (pre_activation, "pre-activation"),
    (unscaled, "forgets sae.input_scale"),
    (every_feature, "every feature is removed"),
])
def test_check_ablation_rejects_mistakes(fn, words):
    with pytest.raises(CheckFailed, match=words):
        checks.check_ablation(fn)


def test_the_ablation_check_rows_have_the_feature_on_and_off():
    from saelab.checks.ablation import FEATURE, _data
    sae, x = _data()
    firing = (sae.encode(x)[:, FEATURE] > 0).sum().item()
    assert 3 <= firing <= 9
