"""train_sae and batch_indices: seeded batches, determinism, history, divergence, metadata, errors."""
import matplotlib.figure
import pytest
import torch

from saelab.sae.tied import TiedSAE
from saelab.training.trainer import TrainResult, batch_indices, train_sae

D, N = 8, 32


def _data(n=300, seed=0):
    """Rows with structure (a few directions plus an offset), so the SAE has something to learn."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.relu(torch.randn(n, 4, generator=g))
    return codes @ torch.randn(4, D, generator=g) + 0.5


def test_batch_indices_are_seeded_permutations_per_epoch():
    batches = list(batch_indices(10, 4, seed=3, epochs=2))
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]
    assert all(b.dtype == torch.int64 for b in batches)
    first, second = torch.cat(batches[:3]), torch.cat(batches[3:])
    assert sorted(first.tolist()) == list(range(10)) and sorted(second.tolist()) == list(range(10))
    assert not torch.equal(first, second)  # reshuffled each epoch
    again = list(batch_indices(10, 4, seed=3, epochs=2))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    other = torch.cat(list(batch_indices(10, 4, seed=4)))
    assert not torch.equal(other, first)


def test_batch_indices_steps_run_through_epochs_and_override_them():
    by_steps = list(batch_indices(10, 4, seed=1, epochs=1, steps=5))
    assert [len(b) for b in by_steps] == [4, 4, 2, 4, 4]
    by_epochs = list(batch_indices(10, 4, seed=1, epochs=2))
    assert all(torch.equal(a, b) for a, b in zip(by_steps, by_epochs))


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_rows=0, batch_size=4, seed=0), r"n_rows: expected an int >= 1"),
    (dict(n_rows=10, batch_size=0, seed=0), r"batch_size: expected an int >= 1"),
    (dict(n_rows=10, batch_size=4, seed=-2), r"seed: expected an int >= 0"),
    (dict(n_rows=10, batch_size=4, seed=0, epochs=0), r"epochs: expected an int >= 1"),
    (dict(n_rows=10, batch_size=4, seed=0, steps=0), r"steps: expected an int >= 1 or None"),
])
def test_batch_indices_validates_eagerly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        batch_indices(**kwargs)  # raises on the call, not on the first next()


def _train(seed=0, sae_seed=0, **kwargs):
    options = dict(steps=30, batch_size=32, device="cpu", progress=False, log_every=10)
    options.update(kwargs)
    return train_sae(TiedSAE(D, N, seed=sae_seed), _data(), seed=seed, **options)


def test_same_seed_same_numbers_different_seed_different_numbers():
    a, b, c = _train(seed=0), _train(seed=0), _train(seed=1)
    assert a.history.equals(b.history)
    for p, q in zip(a.sae.parameters(), b.sae.parameters()):
        assert torch.equal(p, q)
    assert not a.history[["loss"]].equals(c.history[["loss"]])
    assert not torch.equal(a.sae.encoder.weight, c.sae.encoder.weight)


def test_result_history_metrics_and_metadata():
    data = _data()
    sae = TiedSAE(D, N, seed=0)
    before = TiedSAE(D, N, seed=0)
    held_out = _data(n=100, seed=1)
    result = train_sae(sae, data, sparsity_coef=1e-3, lr=3e-3, batch_size=32, steps=25, seed=0, device="cpu",
                       progress=False, eval_activations=held_out, log_every=10)
    assert isinstance(result, TrainResult) and result.sae is sae
    assert list(result.history.columns) == ["step", "loss", "recon", "sparsity", "l0"]
    assert result.history["step"].tolist() == [10, 20, 25]
    assert (result.history["l0"] >= 0).all() and (result.history["l0"] <= N).all()
    assert result.train_metrics.n_tokens == 300 and result.eval_metrics.n_tokens == 100
    # the timer covers the loop only: tokens per second is the rows trained on over that time
    n_trained = sum(len(b) for b in batch_indices(300, 32, seed=0, steps=25))  # 300 rows: epochs end short
    assert result.tokens_per_second == pytest.approx(n_trained / result.seconds, rel=1e-6)
    assert result.table is result.history and result.steps_done == 25 and not result.interrupted
    assert result.summary().startswith("TrainResult: 25 steps in ")
    assert "recon" in repr(result) and "<table" in result._repr_html_()
    # the trained SAE reconstructs better than its initialisation (same init: sae seed 0)
    start_mse = torch.nn.functional.mse_loss(before(data)[0], data).item()
    assert result.train_metrics.mse < start_mse
    # the last history row is the loss of the last batch, as the seed's compute_loss defines it
    last = result.history.iloc[-1]
    assert last["loss"] == pytest.approx(last["recon"] + 1e-3 * last["sparsity"], rel=1e-5)
    assert sae.metadata["lr"] == 3e-3 and sae.metadata["steps"] == 25 and sae.metadata["seed"] == 0
    assert sae.metadata["sparsity_coef"] == 1e-3 and sae.metadata["batch_size"] == 32
    assert sae.metadata["optimizer"] == "Adam"


def test_steps_are_the_seed_loop_on_the_same_batches():
    """train_sae == the seed's loop (its SparseAutoencoder, Adam, compute_loss, backward, step)."""
    from test_sae import SparseAutoencoder

    data = _data(n=100)
    torch.manual_seed(4)
    ref = SparseAutoencoder(D, N)
    optimizer = torch.optim.Adam(ref.parameters(), lr=1e-2)
    for index in batch_indices(100, 16, seed=5, steps=8):
        optimizer.zero_grad()
        loss, _ = ref.compute_loss(data[index], sparsity_coef=0.01)
        loss.backward()
        optimizer.step()
    result = train_sae(TiedSAE(D, N, seed=4), data, sparsity_coef=0.01, lr=1e-2, batch_size=16, steps=8, seed=5,
                       device="cpu", progress=False)
    for (name, p_ref), p in zip(ref.named_parameters(), result.sae.parameters()):
        torch.testing.assert_close(p, p_ref, rtol=1e-4, atol=1e-5, msg=name)


def test_epochs_count_steps_like_the_seed_dataloader():
    result = _train(steps=None, epochs=2, batch_size=64, log_every=1)  # 300 rows -> 5 batches per epoch
    assert result.history["step"].tolist() == list(range(1, 11))


def test_training_on_activations_matches_the_tensor_and_records_provenance(model, train_texts):
    from saelab.activations.rows import as_rows
    from saelab.activations.collect import collect_activations

    acts = collect_activations(model, train_texts[:3], layers=[1], context_length=32, progress=False)[1]
    rows = as_rows(acts).clone()
    options = dict(steps=12, batch_size=16, seed=2, device="cpu", progress=False, log_every=4)
    from_acts = train_sae(TiedSAE(model.cfg.d_model, 64, seed=0), acts, **options)
    from_rows = train_sae(TiedSAE(model.cfg.d_model, 64, seed=0), rows, **options)
    assert from_acts.history.equals(from_rows.history)
    meta = from_acts.sae.metadata
    assert meta["hook_name"] == "blocks.1.hook_resid_post" and meta["layer"] == 1
    assert meta["model_name"] == acts.model_name and meta["n_train_tokens"] == len(acts)
    assert "hook_name" not in from_rows.sae.metadata


def test_non_finite_rows_are_refused_before_any_step_leaving_the_sae_unchanged():
    data = _data(n=64)
    data[37, 2] = float("nan")
    sae, before = TiedSAE(D, N, seed=0), TiedSAE(D, N, seed=0)
    with pytest.raises(ValueError, match=r"activations: row 37 contains NaN or inf; .*\(the SAE is unchanged\)"):
        train_sae(sae, data, batch_size=8, seed=0, device="cpu", progress=False)
    for p, q in zip(sae.parameters(), before.parameters()):
        assert torch.equal(p, q)
    held_out = _data(n=20)
    held_out[5] = float("inf")
    with pytest.raises(ValueError, match=r"eval_activations: row 5 contains NaN or inf"):
        train_sae(sae, _data(n=64), eval_activations=held_out, steps=3, device="cpu", progress=False)
    assert sae.metadata == {}  # refused before training: nothing recorded


def test_overflowing_loss_stops_naming_the_step_and_restores_the_last_finite_state():
    data = _data(n=64) * 1e18  # finite rows whose squares overflow float32
    sae = TiedSAE(D, N, seed=0)
    start = sae.encoder.weight.detach().clone()
    with pytest.raises(FloatingPointError, match=r"step 1; the SAE was restored to its last finite state "
                                                 r"\(after step 0\)\. Try a lower lr \(e.g. lr=0.1 instead of 1\)"):
        train_sae(sae, data, lr=1.0, steps=3, device="cpu", progress=False)
    assert torch.equal(sae.encoder.weight, start) and not sae.training


def test_nan_mid_training_names_the_first_bad_step_and_keeps_the_last_logged_weights():
    """A loss that overflows at step 12 (after a finite log at step 10): the error names step 12,
    the SAE holds the weights of step 10, and the partial history is attached."""
    calls = {"n": 0}
    import saelab.training.trainer as train_module
    real = train_module.gather_rows

    def gather(source, index):
        calls["n"] += 1
        rows = real(source, index)
        return rows * 1e20 if calls["n"] == 12 else rows
    reference = _train(steps=10, batch_size=8, log_every=5)
    train_module.gather_rows = gather
    try:
        sae = TiedSAE(D, N, seed=0)
        with pytest.raises(FloatingPointError, match=r"at step 12; .*\(after step 10\)") as info:
            train_sae(sae, _data(), steps=30, batch_size=8, seed=0, device="cpu", progress=False, log_every=5)
    finally:
        train_module.gather_rows = real
    for p, q in zip(sae.parameters(), reference.sae.parameters()):
        assert torch.equal(p, q)
    assert info.value.histories[0]["step"].tolist() == [5, 10]
    assert torch.isfinite(sae.encoder.weight).all() and not sae.training


def test_finite_divergence_warns_and_returns_a_finite_sae():
    with pytest.warns(RuntimeWarning, match=r"training diverged: the loss reached .* over 100x its first value"):
        result = _train(lr=1e3, steps=60)
    assert all(torch.isfinite(p).all() for p in result.sae.parameters())
    ordinary = _train(lr=1e-3, steps=60)
    assert result.history["recon"].iloc[-1] > 1e4 * ordinary.history["recon"].iloc[-1]
    with warnings_as_errors():
        _train(lr=1e-3, steps=60)  # an ordinary run does not warn


class _InterruptAt:
    """Rows whose 5th gather raises KeyboardInterrupt (Ctrl-C in the middle of step 5)."""
    def __init__(self, rows, step):
        self.rows, self.step, self.calls = rows, step, 0

    def __call__(self, source, index):
        self.calls += 1
        if self.calls == self.step:
            raise KeyboardInterrupt
        return self.rows.index_select(0, index)


def test_keyboard_interrupt_returns_the_partial_result_with_the_sae_usable(monkeypatch):
    import saelab.training.trainer as train_module

    data = _data()
    monkeypatch.setattr(train_module, "gather_rows", _InterruptAt(data, 5))
    sae = TiedSAE(D, N, seed=0)
    with pytest.warns(RuntimeWarning, match=r"training interrupted after step 4 of 30"):
        result = train_sae(sae, data, steps=30, batch_size=32, seed=0, device="cpu", progress=False, log_every=2)
    monkeypatch.undo()
    assert result.interrupted and result.steps_done == 4 and "INTERRUPTED" in result.summary()
    assert result.history["step"].tolist() == [2, 4]
    assert sae.metadata["interrupted_at_step"] == 4 and sae.metadata["steps"] == 30 and not sae.training
    # the SAE holds exactly the weights of 4 uninterrupted steps, and trains on normally afterwards
    four = _train(steps=4, batch_size=32, log_every=2)
    for p, q in zip(sae.parameters(), four.sae.parameters()):
        assert torch.equal(p, q)
    assert result.train_metrics.mse == pytest.approx(four.train_metrics.mse)
    again = train_sae(sae, data, steps=3, device="cpu", progress=False)
    assert "interrupted_at_step" not in again.sae.metadata


def test_config_and_keywords_give_the_same_run_and_bad_fields_are_named():
    from saelab.training.trainer import TrainConfig

    config = TrainConfig(steps=30, batch_size=32, device="cpu", progress=False, log_every=10)
    a = train_sae(TiedSAE(D, N, seed=0), _data(), config=config)
    b = _train()
    assert a.history.equals(b.history) and a.config == b.config == config
    c = train_sae(TiedSAE(D, N, seed=0), _data(), config=config, lr=3e-3)  # a keyword overrides the config
    assert c.config.lr == 3e-3 and not c.history.equals(a.history)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['learning_rate'\]"):
        train_sae(TiedSAE(D, N), _data(), learning_rate=1e-3)
    with pytest.raises(ValueError, match=r"config: expected a saelab.TrainConfig or None, got dict"):
        train_sae(TiedSAE(D, N), _data(), config={"lr": 1e-3})
    with pytest.raises(dataclasses_frozen_error()):
        config.lr = 1.0
    import numpy as np
    numpy_config = TrainConfig(lr=np.float64(1e-3), batch_size=np.int64(32), steps=np.int32(30))
    assert type(numpy_config.batch_size) is int and type(numpy_config.lr) is float and numpy_config.steps == 30


def warnings_as_errors():
    import warnings
    ctx = warnings.catch_warnings()

    class _Ctx:
        def __enter__(self):
            ctx.__enter__()
            warnings.simplefilter("error")

        def __exit__(self, *exc):
            return ctx.__exit__(*exc)
    return _Ctx()


def dataclasses_frozen_error():
    import dataclasses
    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=0.0), r"lr: expected a finite number > 0"),
    (dict(lr=-1e-3), r"lr: expected a finite number > 0"),
    (dict(sparsity_coef=-1.0), r"sparsity_coef: expected a finite number >= 0"),
    (dict(batch_size=0), r"batch_size: expected an int >= 1"),
    (dict(log_every=0), r"log_every: expected an int >= 1"),
    (dict(steps=0), r"steps: expected an int >= 1 or None"),
    (dict(device="nonsense"), r"device: expected 'cpu'"),
    (dict(eval_activations=torch.zeros(5, D + 1)), r"eval_activations: expected rows of width d_model = 8"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_sae(TiedSAE(D, N, seed=0), _data(), progress=False, **kwargs)


def test_bad_sae_and_activations():
    with pytest.raises(ValueError, match=r"sae: expected a saelab TiedSAE"):
        train_sae(torch.nn.Linear(D, N), _data(), progress=False)
    with pytest.raises(ValueError, match=r"activations: expected rows of width d_model = 8 \(the SAE's\), got 5"):
        train_sae(TiedSAE(D, N), torch.zeros(10, 5), progress=False)
    with pytest.raises(ValueError, match=r"activations: expected a single-layer Activations or a float tensor"):
        train_sae(TiedSAE(D, N), [[0.0] * D], progress=False)


def test_plot_has_labelled_loss_and_l0_axes():
    fig = _train(steps=20, log_every=5).plot()
    assert isinstance(fig, matplotlib.figure.Figure)
    labels = [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes]
    assert labels[0] == ("training step", "loss") and labels[1][0] == "training step"
    assert "L0" in labels[1][1]
    assert len(fig.axes[0].lines[0].get_xdata()) == 4


def test_a_non_finite_gradient_with_a_finite_loss_is_caught_at_the_next_log(monkeypatch):
    """An inf in W's gradient at step 7 (the loss itself stays finite): the weights are never written
    back; training stops at the next log (step 10) naming step 7, the SAE holding step 5's weights."""
    import saelab.training.trainer as train_module
    real, calls = train_module.tied_gradients, {"n": 0}

    def poisoned(*args):
        calls["n"] += 1
        grads = real(*args)
        if calls["n"] == 7:
            grads[0][0, 0, 0] = float("inf")          # W's gradient only
        return grads
    reference = _train(steps=5, batch_size=8, log_every=5)
    monkeypatch.setattr(train_module, "tied_gradients", poisoned)
    sae = TiedSAE(D, N, seed=0)
    with pytest.raises(FloatingPointError, match=r"a gradient became NaN or inf \(logged loss nan\) at step 7; .*\(after step 5\)"):
        train_sae(sae, _data(), steps=30, batch_size=8, seed=0, device="cpu", progress=False, log_every=5)
    for p, q in zip(sae.parameters(), reference.sae.parameters()):
        assert torch.equal(p, q)


def test_dense_l1_weighs_the_penalty_of_features_above_the_target_density():
    """The running density follows the batches; features above dense_target get up to (1 + dense_l1), in full
    from DENSE_RAMP x dense_target, linearly in between (continuous: no rounding can flip it). The stacked
    trainer ([k, rows, n_f]) and the untied twin ([rows, n_f]) share the one DensePenalty."""
    from saelab.training.config import TrainConfig
    from saelab.training.trainer import DensePenalty
    penalty = DensePenalty(TrainConfig(dense_l1=0.5, dense_target=0.3, density_decay=0.5))
    features = torch.tensor([[[1.0, 0.0, 0.0], [2.0, 0.0, 1.0], [1.0, 0.0, 0.0], [3.0, 0.0, 0.0]]])  # 100%, 0%, 25%
    assert penalty.weight(features, rows_dim=1).tolist() == [[[1.5, 1.0, 1.0]]]
    torch.testing.assert_close(penalty.density, torch.tensor([[1.0, 0.0, 0.25]]))
    more = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]])   # 0%, 0%, 100%
    assert penalty.weight(more, rows_dim=1).tolist() == [[[1.5, 1.0, 1.5]]]          # (1 + 0) / 2 and (0.25 + 1) / 2
    quarter = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]])   # 25%, 0%, 100%
    torch.testing.assert_close(penalty.weight(quarter, rows_dim=1), torch.tensor([[[1.25, 1.0, 1.5]]]))  # half way
    twin = DensePenalty(TrainConfig(dense_l1=0.5, dense_target=0.3, density_decay=0.5))
    assert twin.weight(features[0], rows_dim=0).tolist() == [[1.5, 1.0, 1.0]]       # one SAE's rows: the same numbers
    assert DensePenalty(TrainConfig()).weight(features, rows_dim=1) is None         # the seed's loss: untouched


def test_dense_l1_leaves_fewer_dense_features(model, train_texts):
    """On tiny's rows (where the seed's loss leaves most features dense at this size), the extra penalty
    on features above 5% density halves the dense ones; the setting is recorded only where it acted."""
    import saelab
    rows = saelab.collect_activations(model, train_texts[:12], 2, max_tokens=4000, progress=False)[2]
    dense = {}
    for dense_l1 in (0.0, 2.0):
        sae = TiedSAE(128, 256, seed=0)
        result = train_sae(sae, rows, 1.0, config=saelab.TrainConfig.lab(progress=False, epochs=3, dense_l1=dense_l1))
        dense[dense_l1] = int((result.train_metrics.feature_density > 0.1).sum())
        assert ("dense_l1" in sae.metadata) == bool(dense_l1)
    assert dense[2.0] < 0.7 * dense[0.0], dense
