"""The lab on CUDA: every tool gives the CPU's numbers within float tolerance, with no device mismatch.

Tests marked `gpu` are skipped without CUDA (conftest.py). Each runs the same small job on the CPU
and on the GPU from the embedded tiny model (collection, train_sae, the stacked sweep, evaluate,
ce_loss_recovered, feature cards) and compares; mixed placements (GPU SAE on CPU rows, CPU SAE on
a GPU model) are covered too. The unmarked tests at the end run everywhere: they check the
device helpers that keep float64 sums off Apple's MPS (which has no float64).
"""
import json

import pytest
import torch

import saelab
from saelab import models
from subprocess_run import run_cli

LAYER = 2
COEFS = (3e-2, 3e-3)
STEPS = 40
TOL = {"rtol": 1e-3, "atol": 1e-4}


def close(a: float, b: float, rel: float = 1e-3, abs_: float = 1e-5) -> bool:
    return a == pytest.approx(b, rel=rel, abs=abs_)


@pytest.fixture(scope="module")
def cuda_model():
    return models.load_model("tiny", device="cuda")


@pytest.fixture(scope="module")
def cpu_acts(model, train_texts):
    return saelab.collect_activations(model, train_texts[:12], [LAYER], max_tokens=1500, progress=False)[LAYER]


@pytest.fixture(scope="module")
def gpu_acts(cuda_model, train_texts):
    """Collected on the GPU model into a GPU store."""
    return saelab.collect_activations(cuda_model, train_texts[:12], [LAYER], max_tokens=1500, device="cuda",
                                      progress=False)[LAYER]


@pytest.fixture(scope="module")
def trained(cpu_acts, gpu_acts):
    """(CPU TrainResult, CUDA TrainResult) of the same SAE, seed and batches."""
    cpu = saelab.train_sae(saelab.TiedSAE(cpu_acts.width, 512, seed=0), cpu_acts, sparsity_coef=3e-3,
                           steps=STEPS, device="cpu", progress=False)
    gpu = saelab.train_sae(saelab.TiedSAE(gpu_acts.width, 512, seed=0), gpu_acts, sparsity_coef=3e-3,
                           steps=STEPS, device="cuda", progress=False)
    return cpu, gpu


@pytest.mark.gpu
def test_collection_into_gpu_and_cpu_stores_matches_the_cpu(cuda_model, cpu_acts, gpu_acts, train_texts):
    assert gpu_acts.device.type == "cuda" and cpu_acts.device.type == "cpu"
    to_cpu_store = saelab.collect_activations(cuda_model, train_texts[:12], [LAYER], max_tokens=1500,
                                              progress=False)[LAYER]
    assert to_cpu_store.device.type == "cpu"
    torch.testing.assert_close(gpu_acts.rows.cpu(), cpu_acts.rows, **TOL)
    torch.testing.assert_close(to_cpu_store.rows, cpu_acts.rows, **TOL)
    assert torch.equal(gpu_acts.token_ids, cpu_acts.token_ids)


@pytest.mark.gpu
def test_train_sae_on_cuda_matches_the_cpu(trained):
    cpu, gpu = trained
    assert gpu.sae.encoder.weight.device.type == "cuda"
    torch.testing.assert_close(gpu.sae.encoder.weight.cpu(), cpu.sae.encoder.weight, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(torch.tensor(gpu.history["recon"].to_numpy()),
                               torch.tensor(cpu.history["recon"].to_numpy()), rtol=1e-3, atol=1e-5)
    assert close(gpu.train_metrics.mse, cpu.train_metrics.mse)
    assert abs(gpu.train_metrics.l0 - cpu.train_metrics.l0) <= 0.01 * cpu.train_metrics.l0 + 0.05


@pytest.mark.gpu
def test_lab_recipe_on_cuda_matches_the_cpu(cpu_acts, gpu_acts):
    """TrainConfig.lab(): the row scale, the density-set biases (kthvalue) and the lr decay on the GPU."""
    config = saelab.TrainConfig.lab(epochs=4, progress=False)
    cpu = saelab.sparsity_sweep(cpu_acts, coefs=(2.0, 4.0), n_features=512, config=config, device="cpu", progress=False)
    gpu = saelab.sparsity_sweep(gpu_acts, coefs=(2.0, 4.0), n_features=512, config=config, device="cuda",
                                progress=False)
    for coef in (2.0, 4.0):
        assert gpu.saes[coef].input_scale == pytest.approx(cpu.saes[coef].input_scale, rel=1e-5)
        assert gpu.saes[coef].W_dec.device.type == "cuda"
        assert close(gpu.metrics[coef].fvu, cpu.metrics[coef].fvu, rel=1e-2)
        assert abs(gpu.metrics[coef].l0 - cpu.metrics[coef].l0) <= 0.02 * cpu.metrics[coef].l0 + 0.1


@pytest.mark.gpu
def test_stacked_sweep_on_cuda_matches_the_cpu(cpu_acts, gpu_acts):
    cpu = saelab.sparsity_sweep(cpu_acts, coefs=COEFS, n_features=512, steps=STEPS, device="cpu", progress=False)
    gpu = saelab.sparsity_sweep(gpu_acts, coefs=COEFS, n_features=512, steps=STEPS, device="cuda", progress=False)
    for column in ("mse", "explained_variance", "l1"):
        torch.testing.assert_close(torch.tensor(gpu.table[column].to_numpy()),
                                   torch.tensor(cpu.table[column].to_numpy()), rtol=2e-3, atol=1e-5)
    for coef in COEFS:
        assert gpu.saes[coef].encoder.weight.device.type == "cuda"
        torch.testing.assert_close(gpu.saes[coef].encoder.weight.cpu(), cpu.saes[coef].encoder.weight,
                                   rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
def test_evaluate_on_every_placement_matches_the_cpu(trained, cpu_acts, gpu_acts):
    cpu_sae, gpu_sae = trained[0].sae, trained[1].sae
    reference = saelab.evaluate(cpu_sae, cpu_acts)
    for sae, acts in ((gpu_sae, gpu_acts), (gpu_sae, cpu_acts), (cpu_sae, gpu_acts.to("cpu"))):
        result = saelab.evaluate(sae, acts)
        for key in ("mse", "explained_variance", "l1"):
            assert close(getattr(result, key), getattr(reference, key), rel=2e-3), key
        assert result.feature_density.device.type == "cpu"
    assert saelab.evaluate(gpu_sae, gpu_acts.rows).n_tokens == len(gpu_acts)  # a bare CUDA tensor


@pytest.mark.gpu
def test_ce_loss_recovered_on_cuda_matches_the_cpu(model, cuda_model, trained, test_texts):
    cpu_sae, gpu_sae = trained[0].sae, trained[1].sae
    reference = saelab.ce_loss_recovered(model, cpu_sae, test_texts[:6], LAYER, context_length=64)
    for m, sae in ((cuda_model, gpu_sae), (cuda_model, cpu_sae)):
        result = saelab.ce_loss_recovered(m, sae, test_texts[:6], LAYER, context_length=64)
        assert close(result.clean, reference.clean, rel=1e-4)
        assert close(result.spliced, reference.spliced, rel=2e-3)
        assert close(result.score, reference.score, rel=5e-3, abs_=1e-3)


@pytest.mark.gpu
def test_feature_card_on_cuda_matches_the_cpu(model, cuda_model, trained, cpu_acts, gpu_acts):
    cpu_sae, gpu_sae = trained[0].sae, trained[1].sae
    feature = int(saelab.evaluate(cpu_sae, cpu_acts).feature_density.argmax())
    reference = saelab.feature_card(model, cpu_sae, cpu_acts, feature, k=5)
    card = saelab.feature_card(cuda_model, gpu_sae, gpu_acts, feature, k=5)
    assert card.n_active == reference.n_active or abs(card.density - reference.density) < 0.01
    assert close(card.max_activation, reference.max_activation, rel=5e-3)
    effects = [torch.tensor(c.logit_effects.table["effect"].to_numpy()) for c in (card, reference)]
    torch.testing.assert_close(effects[0], effects[1], rtol=2e-3, atol=1e-4)  # same order, near-ties aside
    assert "<h2" in card.html()


@pytest.mark.gpu
def test_notebooks_execute_on_cuda(tmp_path):
    """`saelab notebooks execute` in a scratch root: the solution notebook runs top to bottom on CUDA."""
    for command in (["notebooks", "build", "--root", str(tmp_path)],
                    ["notebooks", "execute", "--root", str(tmp_path), "--model", "tiny"]):
        result = run_cli(command, timeout=3600, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    notebook = json.loads((tmp_path / "solutions" / "lab_c4.ipynb").read_text(encoding="utf-8"))
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert code and all(c.get("execution_count") for c in code)  # every code cell ran


# -- everywhere: the helpers that keep float64 off devices without it (Apple MPS)

@pytest.mark.parametrize("device, want", [
    ("cpu", (torch.float64, "cpu")),
    ("cuda", (torch.float64, "cuda")),
    ("cuda:1", (torch.float64, "cuda:1")),
    ("mps", (torch.float32, "cpu")),
])
def test_accumulation_keeps_float64_sums_off_mps(device, want):
    dtype, home = models.accumulation(device)
    assert (dtype, str(home)) == (want[0], want[1])
    assert models.supports_float64(device) == (device != "mps")


def test_accumulation_recipe_gives_float64_totals_on_cpu():
    dtype, home = models.accumulation("cpu")
    x = torch.arange(10, dtype=torch.float32)
    total = torch.zeros((), dtype=torch.float64, device=home)
    total += x.pow(2).sum(dtype=dtype).to(home, torch.float64)
    assert total.dtype == torch.float64 and total.item() == 285.0


def test_adam_steps_where_torch_has_no_fused_kernel():
    """Parameters on a device without a fused Adam kernel ("meta" here; MPS on older torch) get plain Adam."""
    from saelab.training.trainer import adam   # the one Adam constructor: if it moves, this fails

    weight = torch.zeros(4, 3, device="meta", requires_grad=True)
    weight.grad = torch.zeros_like(weight)
    adam([weight], 1e-3).step()
