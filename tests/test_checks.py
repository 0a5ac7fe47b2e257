"""Each check accepts the reference, and rejects the stub and typical mistakes with a telling message."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from saelab import checks
from saelab.checks import CheckFailed
from seed_reference import SparseAutoencoder


# --------------------------------------------------------------------------- check_sae

# The lab's skeleton with the reference solution filled in is the seed's class (subclasses break one thing each).
SkeletonSAE = SparseAutoencoder


class StubSAE(SkeletonSAE):
    def encode(self, x):
        raise NotImplementedError()


class UntransposedDecode(SkeletonSAE):
    def decode(self, features):
        return F.linear(features, self.encoder.weight, self.decoder_bias)


class NoDecoderBias(SkeletonSAE):
    def decode(self, features):
        return features @ self.encoder.weight


class UntiedDecoder(SkeletonSAE):
    def __init__(self, d_model, n_features):
        super().__init__(d_model, n_features)
        self.decoder = nn.Linear(n_features, d_model)

    def decode(self, features):
        return self.decoder(features)


class NoRelu(SkeletonSAE):
    def encode(self, x):
        return self.encoder(x)


class SummedL1(SkeletonSAE):
    def compute_loss(self, x, sparsity_coef=1e-3):
        reconstructed, features = self.forward(x)
        recon = F.mse_loss(reconstructed, x)
        sparsity = features.abs().sum(dim=-1).mean()
        return recon + sparsity_coef * sparsity, {
            "recon": recon.item(), "sparsity": sparsity.item(),
            "n_active": (features > 0).sum(dim=-1).float().mean().item()}


class FixedCoef(SkeletonSAE):
    def compute_loss(self, x, sparsity_coef=1e-3):
        return super().compute_loss(x, sparsity_coef=1e-3)


class FloatLoss(SkeletonSAE):
    def compute_loss(self, x, sparsity_coef=1e-3):
        loss, stats = super().compute_loss(x, sparsity_coef)
        return loss.item(), stats


def test_check_sae_accepts_the_reference(capsys):
    checks.check_sae(SkeletonSAE)
    checks.check_sae(SkeletonSAE(4, 8))  # an instance works too; its own shape does not matter
    out = capsys.readouterr().out
    assert out.startswith("✅ check_sae (exercise ")


@pytest.mark.parametrize("cls, words", [
    (StubSAE, "not implemented yet"),
    (UntransposedDecode, "not transposed"),
    (NoDecoderBias, "without the decoder bias"),
    (UntiedDecoder, "tied"),
    (NoRelu, "negative values"),
    (SummedL1, "summed over features"),
    (FixedCoef, "sparsity_coef"),
    (FloatLoss, "0-dimensional tensor"),
])
def test_check_sae_rejects_mistakes(cls, words):
    with pytest.raises(CheckFailed, match=words) as info:
        checks.check_sae(cls)
    assert isinstance(info.value, AssertionError)
    assert "\n" not in str(info.value)  # one paragraph


def test_check_sae_rejects_a_non_class():
    with pytest.raises(CheckFailed, match="pass your SAE class"):
        checks.check_sae("MySAE")


# --------------------------------------------------------------------------- check_activations

def reference_rows(model, texts, layer):
    rows = []
    with torch.no_grad():
        for text in texts:
            _, cache = model.run_with_cache(model.to_tokens(text))
            rows.append(cache["resid_post", layer][0, 1:])
    return torch.cat(rows)


def test_check_activations_accepts_the_reference(model, capsys):
    checks.check_activations(reference_rows, model)
    assert capsys.readouterr().out.startswith("✅ check_activations (exercise ")


def with_bos(model, texts, layer):
    with torch.no_grad():
        return torch.cat([model.run_with_cache(model.to_tokens(t))[1]["resid_post", layer][0] for t in texts])


def wrong_layer(model, texts, layer):
    return reference_rows(model, texts, layer + 1)


def not_concatenated(model, texts, layer):
    return [reference_rows(model, [t], layer) for t in texts]


def stub_rows(model, texts, layer):
    raise NotImplementedError()


@pytest.mark.parametrize("fn, words", [
    (stub_rows, "not implemented yet"),
    (with_bos, "BOS rows are still in"),
    (wrong_layer, "rows of layer 2, not layer 1"),
    (not_concatenated, "torch.cat"),
])
def test_check_activations_rejects_mistakes(model, fn, words):
    with pytest.raises(CheckFailed, match=words):
        checks.check_activations(fn, model)


# --------------------------------------------------------------------------- check_training_loop

def train_one(sae, rows, sparsity_coef, lr=1e-3, batch_size=64, epochs=1, seed=0):
    from saelab.training.trainer import batch_indices
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    losses = []
    for batch in batch_indices(len(rows), batch_size, seed=seed, epochs=epochs):
        optimizer.zero_grad()
        loss, _ = sae.compute_loss(rows[batch], sparsity_coef=sparsity_coef)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def no_zero_grad(sae, rows, sparsity_coef, lr=1e-3, batch_size=64, epochs=1, seed=0):
    from saelab.training.trainer import batch_indices
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    losses = []
    for batch in batch_indices(len(rows), batch_size, seed=seed, epochs=epochs):
        loss, _ = sae.compute_loss(rows[batch], sparsity_coef=sparsity_coef)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def ignores_coef(sae, rows, sparsity_coef, **kwargs):
    return train_one(sae, rows, 1e-3, **kwargs)


def no_step(sae, rows, sparsity_coef, lr=1e-3, batch_size=64, epochs=1, seed=0):
    from saelab.training.trainer import batch_indices
    return [sae.compute_loss(rows[b], sparsity_coef)[0].item()
            for b in batch_indices(len(rows), batch_size, seed=seed, epochs=epochs)]


def stub_loop(sae, rows, sparsity_coef, lr=1e-3, batch_size=64, epochs=1, seed=0):
    raise NotImplementedError()


def test_check_training_loop_accepts_the_reference(capsys):
    checks.check_training_loop(train_one)
    assert capsys.readouterr().out.startswith("✅ check_training_loop (exercise ")


@pytest.mark.parametrize("fn, words", [
    (stub_loop, "not implemented yet"),
    (no_zero_grad, "zero_grad"),
    (ignores_coef, "pass the sparsity_coef"),
    (no_step, "did not change"),
])
def test_check_training_loop_rejects_mistakes(fn, words):
    with pytest.raises(CheckFailed, match=words):
        checks.check_training_loop(fn)


# --------------------------------------------------------------------------- check_top_pairs

def top_pairs(features, k=10, min_density=0.01):
    active = torch.nonzero((features > 0).float().mean(0) > min_density).flatten()
    corr = torch.corrcoef(features[:, active].T)
    i, j = torch.triu_indices(len(active), len(active), offset=1)
    values = corr[i, j]
    order = values.argsort(descending=True)[:k]
    return [(int(active[i[o]]), int(active[j[o]]), float(values[o])) for o in order]


def with_self_pairs(features, k=10, min_density=0.01):
    active = torch.nonzero((features > 0).float().mean(0) > min_density).flatten()
    corr = torch.corrcoef(features[:, active].T)
    flat = corr.flatten().argsort(descending=True)[:k]
    n = len(active)
    return [(int(active[f // n]), int(active[f % n]), float(corr.flatten()[f])) for f in flat]


def with_duplicates(features, k=10, min_density=0.01):
    active = torch.nonzero((features > 0).float().mean(0) > min_density).flatten()
    corr = torch.corrcoef(features[:, active].T)
    corr.fill_diagonal_(0)
    flat = corr.flatten().argsort(descending=True)[:k]
    n = len(active)
    return [(int(active[f // n]), int(active[f % n]), float(corr.flatten()[f])) for f in flat]


def subset_positions(features, k=10, min_density=0.01):
    active = torch.nonzero((features > 0).float().mean(0) > min_density).flatten()
    return [(a, b, c) for (a, b, c) in (
        (int((active == i).nonzero()), int((active == j).nonzero()), c) for i, j, c in top_pairs(features, k, min_density))]


def stub_pairs(features, k=10, min_density=0.01):
    raise NotImplementedError()


def test_check_top_pairs_accepts_the_reference(capsys):
    checks.check_top_pairs(top_pairs)
    assert capsys.readouterr().out.startswith("✅ check_top_pairs (exercise ")


@pytest.mark.parametrize("fn, words", [
    (stub_pairs, "not implemented yet"),
    (with_self_pairs, "self-pairs"),
    (with_duplicates, "same pair twice"),
    (subset_positions, "positions among the frequently active features"),
])
def test_check_top_pairs_rejects_mistakes(fn, words):
    with pytest.raises(CheckFailed, match=words):
        checks.check_top_pairs(fn)


# --------------------------------------------------------------------------- check_fvu

def fvu(x, x_hat):
    return ((x - x_hat).pow(2).sum() / (x - x.mean(dim=0)).pow(2).sum()).item()


@pytest.mark.parametrize("fn, words", [
    (lambda x, x_hat: (_ for _ in ()).throw(NotImplementedError()), "not implemented yet"),
    (lambda x, x_hat: 1 - fvu(x, x_hat), "explained variance"),
    (lambda x, x_hat: ((x - x_hat).pow(2).sum() / x.pow(2).sum()).item(), "not the variance"),
    (lambda x, x_hat: (x - x_hat).pow(2).mean(), "this is the MSE"),
])
def test_check_fvu_rejects_mistakes(fn, words):
    with pytest.raises(CheckFailed, match=words):
        checks.check_fvu(fn)


def test_check_fvu_accepts_the_reference(capsys):
    checks.check_fvu(fvu)
    assert capsys.readouterr().out.startswith("✅ check_fvu (exercise ")


def test_check_fvu_names_centring_and_sample_variance_mistakes():
    with pytest.raises(CheckFailed, match="one overall mean"):
        checks.check_fvu(lambda x, x_hat: ((x - x_hat).pow(2).sum() / (x - x.mean()).pow(2).sum()).item())
    with pytest.raises(CheckFailed, match="sample variance"):
        checks.check_fvu(lambda x, x_hat: ((x - x_hat).pow(2).mean() / x.var(dim=0).mean()).item())


# --------------------------------------------------------------------------- more recipe steps skipped

def test_check_activations_names_the_hook_not_the_layer_for_resid_pre(model):
    def resid_pre(model, texts, layer):
        with torch.no_grad():
            return torch.cat([model.run_with_cache(model.to_tokens(t))[1]["resid_pre", layer][0, 1:] for t in texts])
    with pytest.raises(CheckFailed, match="hook resid_pre at layer 1") as info:
        checks.check_activations(resid_pre, model)
    assert "not layer 1" not in str(info.value)


def test_check_activations_bos_message_does_not_contradict_itself_on_tiny(model):
    with pytest.raises(CheckFailed) as info:
        checks.check_activations(with_bos, model)
    message = str(info.value)
    assert "the same vector in every text" in message and "On GPT-2" in message
    assert "1x" not in message


def test_check_activations_notices_the_last_token_dropped_instead_of_bos(model):
    def last_dropped(model, texts, layer):
        with torch.no_grad():
            return torch.cat([model.run_with_cache(model.to_tokens(t))[1]["resid_post", layer][0, :-1] for t in texts])
    with pytest.raises(CheckFailed, match="LAST position"):
        checks.check_activations(last_dropped, model)


def variant_loop(zero_grad=True, fresh=False, whole=False, record=lambda loss, stats: loss.item()):
    from saelab.training.trainer import batch_indices

    def loop(sae, rows, sparsity_coef, lr=1e-3, batch_size=64, epochs=1, seed=0):
        optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
        losses = []
        for batch in batch_indices(len(rows), batch_size, seed=seed, epochs=epochs):
            if fresh:
                optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
            if zero_grad:
                optimizer.zero_grad()
            loss, stats = sae.compute_loss(rows if whole else rows[batch], sparsity_coef=sparsity_coef)
            loss.backward()
            optimizer.step()
            losses.append(record(loss, stats))
        return losses
    return loop


@pytest.mark.parametrize("fn, words", [
    (variant_loop(zero_grad=False), "without optimizer.zero_grad"),
    (variant_loop(fresh=True), "new Adam optimizer at every step"),
    (variant_loop(whole=True), "on all rows at every step"),
    (variant_loop(record=lambda loss, stats: stats["recon"]), "recorded losses are not each step's loss"),
    (variant_loop(record=lambda loss, stats: stats), "should be floats"),
])
def test_check_training_loop_names_each_skipped_step(fn, words):
    with pytest.raises(CheckFailed, match=words):
        checks.check_training_loop(fn)


def pairs_variant(filter_by=lambda f, d: (f > 0).float().mean(0) > d, descending=True, top_k=True, swap=False,
                  nan_to_num=False):
    def fn(features, k=10, min_density=0.01):
        active = torch.nonzero(filter_by(features, min_density)).flatten()
        corr = torch.corrcoef(features[:, active].T)
        if nan_to_num:
            corr = torch.nan_to_num(corr)
        i, j = torch.triu_indices(len(active), len(active), offset=1)
        order = corr[i, j].argsort(descending=descending)[:k if top_k else None]
        pairs = [(int(active[i[o]]), int(active[j[o]]), float(corr[i[o], j[o]])) for o in order]
        return [(b, a, c) for a, b, c in pairs] if swap else pairs
    return fn


@pytest.mark.parametrize("fn, words", [
    (pairs_variant(filter_by=lambda f, d: torch.ones(f.shape[1], dtype=torch.bool)), "NaN"),
    (pairs_variant(filter_by=lambda f, d: torch.ones(f.shape[1], dtype=torch.bool), nan_to_num=True),
     "feature 8 is active on 0.5% of the rows"),
    (pairs_variant(filter_by=lambda f, d: f.mean(0) > d), "below min_density"),
    (pairs_variant(descending=False), "LEAST correlated"),
    (pairs_variant(top_k=False), "expected k = 6"),
    (pairs_variant(swap=True), "smaller feature id first"),
])
def test_check_top_pairs_names_each_skipped_step(fn, words):
    with pytest.raises(CheckFailed, match=words):
        checks.check_top_pairs(fn)


def test_the_rare_feature_would_enter_the_top_pairs_without_the_density_filter():
    from saelab.experiments.correlation import top_correlated_pairs
    features = checks.pairs.pair_features()
    assert (features[:, checks.pairs.RARE] > 0).float().mean() < checks.pairs.MIN_DENSITY
    unfiltered = top_correlated_pairs(features, k=checks.pairs.K, min_density=0.0)
    assert any(checks.pairs.RARE in (i, j) for i, j, _ in unfiltered)


# --------------------------------------------------------------------------- how a failure shows

def test_failure_text_is_the_message_with_its_check_and_exercise():
    with pytest.raises(CheckFailed) as info:
        checks.check_fvu(lambda x, x_hat: 1 - fvu(x, x_hat))
    assert str(info.value).startswith("check_fvu (exercise 5): this is the explained variance")
    text = checks.failure_text(info.value)
    assert text.startswith("❌ check_fvu (exercise 5) failed: this is the explained variance")
    assert max(len(line) for line in text.splitlines()) <= 100
    assert sorted(checks.EXERCISES.values()) == [1, 2, 3, 4, 5, 7, 8]  # Part 6 has questions only


def run_python(code):
    import os
    import subprocess
    import sys
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)  # a hang guard


def test_plain_python_shows_the_message_without_a_stack_trace():
    done = run_python("from saelab import checks\nchecks.check_fvu(lambda x, x_hat: 0.5)")
    assert done.returncode == 1
    assert done.stderr.startswith("❌ check_fvu (exercise 5) failed: fvu(x, x_hat) = 0.5, expected")
    assert "Traceback" not in done.stderr
    # any other exception keeps Python's own traceback
    other = run_python("from saelab import checks\n1 / 0")
    assert other.returncode == 1 and "Traceback" in other.stderr and "ZeroDivisionError" in other.stderr


def test_an_ipython_shell_shows_the_message_and_the_cell_fails():
    """The installed IPython's InteractiveShell (the class every kernel's shell extends): the custom
    handler shows the message itself, since IPython ignores what a handler returns."""
    done = run_python(
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "shell = InteractiveShell.instance()\n"
        "shell.run_cell('from saelab import checks')\n"
        "result = shell.run_cell('checks.check_fvu(lambda x, x_hat: 0.5)')\n"
        "print('success', result.success, type(result.error_in_exec).__name__)\n")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "❌ check_fvu (exercise 5) failed: fvu(x, x_hat) = 0.5" in out
    assert "success False CheckFailed" in out
    assert "Traceback" not in out + done.stderr


def test_the_bos_message_states_the_norm_ratio_only_where_it_is_large():
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(10, 8, generator=g)
    is_bos = torch.zeros(10, dtype=torch.bool)
    is_bos[[0, 5]] = True
    rows[is_bos] = torch.full((8,), 20.0)  # one vector, about 20x the other rows' norm
    message = checks.rows.bos_message(rows, is_bos)
    assert "the same vector in every text" in message
    ratio = rows[is_bos].norm(dim=-1).mean() / rows[~is_bos].norm(dim=-1).mean()
    assert f"Its norm is also {ratio:.0f}x the other rows' mean" in message and "On GPT-2" not in message
    rows[is_bos] = rows[~is_bos][:2] * 1.3  # like tiny: not identical, not large
    message = checks.rows.bos_message(rows, is_bos)
    assert "x the other rows' mean" not in message and "On GPT-2" in message
    assert "the same vector" not in message


def test_check_activations_wants_the_model():
    with pytest.raises(CheckFailed, match="pass the notebook's model"):
        checks.check_activations(reference_rows, "tiny")


# --------------------------------------------------------------------------- issue 20: holes found by a student

def per_dimension_fvu(x, x_hat):
    return ((x - x_hat).pow(2).sum(dim=0) / (x - x.mean(dim=0)).pow(2).sum(dim=0)).mean().item()


def test_check_fvu_rejects_the_mean_of_per_dimension_fvus():
    with pytest.raises(CheckFailed, match="mean of each dimension's own FVU"):
        checks.check_fvu(per_dimension_fvu)


def test_check_fvu_inputs_separate_the_right_answer_from_every_listed_mistake():
    from saelab.checks.fvu import _data, _mistakes
    from saelab.metrics import evaluate
    sae, x, x_hat = _data()
    right = evaluate(sae, x).fvu
    assert abs(right - fvu(x, x_hat)) < 1e-6
    values = _mistakes(x, x_hat)
    assert len(values) == 6
    for hint, value in values.items():
        assert abs(value - right) > 0.01 * right, hint  # 100x the check's tolerance (rel 1e-4)
    assert per_dimension_fvu(x, x_hat) > 2 * right      # uneven dimensions: 0.241 against 0.102


class WrongTermCoef(SkeletonSAE):
    def compute_loss(self, x, sparsity_coef=1e-3):
        reconstructed, features = self.forward(x)
        recon, sparsity = F.mse_loss(reconstructed, x), features.abs().mean()
        return sparsity_coef * recon + sparsity, {
            "recon": recon.item(), "sparsity": sparsity.item(),
            "n_active": (features > 0).sum(dim=-1).float().mean().item()}


def test_check_sae_names_the_coefficient_on_the_wrong_term_without_blaming_a_fixed_number():
    with pytest.raises(CheckFailed, match="multiplies the wrong term") as info:
        checks.check_sae(WrongTermCoef)
    assert "fixed number" not in str(info.value)


def test_check_sae_names_the_fixed_coefficient_it_found():
    with pytest.raises(CheckFailed, match=r"recon \+ 0.001 \* sparsity"):
        checks.check_sae(FixedCoef)


def resid_post_one_layer_early(model, texts, layer):
    return reference_rows(model, texts, layer - 1)


def test_check_activations_advice_for_the_previous_layer_names_both_readings(model):
    with pytest.raises(CheckFailed) as info:
        checks.check_activations(resid_post_one_layer_early, model)
    message = str(info.value)
    assert "resid_post at layer 0" in message and "one block too early" in message
    assert "cache['resid_post', layer]" in message


def batch_dimension_kept(model, texts, layer):
    rows = []
    with torch.no_grad():
        for text in texts:
            _, cache = model.run_with_cache(model.to_tokens(text))
            rows.append(cache["resid_post", layer][:, 1:])
    return torch.cat(rows, dim=0)


def test_check_activations_hints_at_the_batch_dimension_when_torch_cat_fails(model):
    with pytest.raises(CheckFailed) as info:
        checks.check_activations(batch_dimension_kept, model)
    message = str(info.value)
    assert "RuntimeError: Sizes of tensors must match" in message
    assert ".." not in message
    assert "batch dimension" in message and "[0, 1:]" in message
