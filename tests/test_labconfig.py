"""The lab's recipe (`TrainConfig.lab()`, issue 12) and sizes (`labconfig`, issue 13): small max_tokens
means small work, the estimate `saelab run` prints, and the recipe's settings."""
import dataclasses
import math

import pytest
import torch

from saelab import TiedSAE, TrainConfig, train_sae
from saelab.training.lab_settings import COEF, SIZE_ENV, SWEEP_COEFS, estimate_seconds, lab_settings
from saelab.training.config import LAB_RECIPE

GPT2_CFG = type("Cfg", (), {"d_model": 768, "n_layers": 12, "d_vocab": 50257, "n_ctx": 1024})()


def test_the_lab_recipe_is_one_named_setting_and_the_defaults_stay_the_seeds():
    lab, seed = TrainConfig.lab(), TrainConfig()
    assert {k: getattr(lab, k) for k in LAB_RECIPE} == {**LAB_RECIPE, "betas": (0.9, 0.99)}
    assert (seed.lr, seed.batch_size, seed.betas, seed.lr_decay, seed.normalize, seed.init_norm,
            seed.init_density) == (1e-3, 64, (0.9, 0.999), 0.0, False, None, None)
    assert TrainConfig.lab(lr=1e-2, steps=5).lr == 1e-2 and TrainConfig.lab(steps=5).init_density == 0.05


@pytest.mark.parametrize("field, value, message", [
    ("betas", (0.9,), r"betas: expected a pair \(beta1, beta2\)"),
    ("betas", (0.9, 1.0), r"betas\[1\]: expected a number in \[0, 1\)"),
    ("lr_decay", 1.5, r"lr_decay: expected a number in \[0, 1\]"),
    ("init_density", 0.0, r"init_density: expected a number in \(0, 1\)"),
    ("init_norm", -1.0, r"init_norm: expected a finite number > 0"),
    ("normalize", "yes", r"normalize: expected True or False"),
])
def test_recipe_fields_are_validated(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_lr_decays_linearly_over_the_last_fraction():
    config = TrainConfig(lr=1.0, lr_decay=0.2)
    lrs = [config.lr_at(step, 10) for step in range(1, 11)]
    assert lrs == [1.0] * 8 + [1.0, 0.5]   # the last 2 steps: lr * 2/2, lr * 1/2
    assert [TrainConfig(lr=1.0).lr_at(s, 10) for s in (1, 10)] == [1.0, 1.0]


def test_the_recipe_is_recorded_with_the_sae(tmp_path):
    rows = torch.randn(600, 16, generator=torch.Generator().manual_seed(0)) * 7
    sae = TiedSAE(16, 64, seed=0)
    result = train_sae(sae, rows, 1.0, config=TrainConfig.lab(progress=False))
    assert result.steps_done == 2 * math.ceil(600 / 256)   # two epochs: the steps follow the rows
    meta = sae.metadata
    assert (meta["betas"], meta["lr_decay"], meta["normalize"], meta["init_density"]) == ([0.9, 0.99], 0.2, True, 0.05)
    assert sae.input_scale == pytest.approx(7.0, rel=0.1)
    assert TiedSAE.load(sae.save(tmp_path / "sae"), device="cpu").input_scale == sae.input_scale


def test_lab_settings_follow_the_model_the_size_and_max_tokens(monkeypatch):
    monkeypatch.delenv(SIZE_ENV, raising=False)
    tiny = lab_settings("tiny")
    assert (tiny.max_tokens, tiny.coefs, tiny.coef, tiny.train) == (None, SWEEP_COEFS, COEF, TrainConfig.lab(progress=False))
    assert COEF in SWEEP_COEFS and lab_settings("gpt2-small").max_tokens == 200_000
    small = lab_settings("gpt2-small", max_tokens=3000)
    assert (small.max_tokens, small.eval_tokens, small.ce_texts) == (3000, 1500, 1)
    monkeypatch.setenv(SIZE_ENV, "small")
    assert lab_settings("gpt2-small").size == "small" and lab_settings("gpt2-small").max_tokens == 2000
    assert lab_settings("tiny", size="full").max_tokens is None
    monkeypatch.setenv(SIZE_ENV, "huge")
    with pytest.raises(ValueError, match=r"size: expected 'full' or 'small' \(or \$SAELAB_LAB_SIZE"):
        lab_settings("tiny")
    with pytest.raises(ValueError, match="max_tokens: expected an int >= 1"):
        lab_settings("tiny", max_tokens=0, size="full")
    with pytest.raises(ValueError, match="model_name: expected a model name"):
        lab_settings("", size="full")


def test_small_max_tokens_means_small_work_and_the_estimate_says_so():
    full, small = lab_settings("gpt2-small", size="full"), lab_settings("gpt2-small", max_tokens=3000, size="full")
    assert small.train.n_steps(3000) == 24 and full.train.n_steps(200_000) == 1564   # two epochs of 256
    cpu_full, cpu_small = estimate_seconds(full, GPT2_CFG, "cpu"), estimate_seconds(small, GPT2_CFG, "cpu")
    assert cpu_small < 600 and 10 * cpu_small < cpu_full      # minutes for 3,000 rows, hours for 200,000
    assert estimate_seconds(full, GPT2_CFG, "cuda") < cpu_full / 10
    with pytest.raises(ValueError, match="model_cfg: expected a model config with an integer d_model"):
        estimate_seconds(full, object(), "cpu")
    with pytest.raises(ValueError, match="settings: expected a saelab.training.lab_settings.LabSettings"):
        estimate_seconds({"max_tokens": 3}, GPT2_CFG, "cpu")


def test_settings_are_json_able_for_the_manifest():
    import json
    settings = lab_settings("tiny", size="small")
    data = json.loads(json.dumps(settings.as_dict()))
    assert data["train"]["normalize"] is True and data["coefs"] == list(SWEEP_COEFS)
    with pytest.raises(dataclasses.FrozenInstanceError):     # shared by the notebook and `saelab run`
        settings.ce_texts = 1
    changed = dataclasses.replace(settings, ce_texts=1)
    assert changed.ce_texts == 1 and settings.ce_texts == lab_settings("tiny", size="small").ce_texts
