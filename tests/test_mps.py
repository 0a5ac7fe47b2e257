"""Apple MPS has no float64: the accumulations keep float64 off the device (tested on CPU by
making `accumulation` give MPS's answer), and give bit-identical results on CPU."""
import torch

from saelab import models
from saelab.experiments import correlation, layers
from saelab.sae.tied import TiedSAE

MPS_ANSWER = (torch.float32, torch.device("cpu"))


def _rows():
    return torch.randn(600, 8, generator=torch.Generator().manual_seed(0))


def test_comoments_on_cpu_are_unchanged_float64():
    moments = correlation._Comoments(3, "cpu")
    values = torch.rand(50, 3, generator=torch.Generator().manual_seed(1))
    moments.add(values)
    shifted = values.double() - values.double().mean(dim=0)
    assert moments.total.dtype == torch.float64 and torch.equal(moments.cross, shifted.T @ shifted)


def test_mps_accumulation_reduces_in_float32_and_sums_in_float64_on_the_cpu(monkeypatch):
    sae = TiedSAE(8, 16, seed=0)
    rows = _rows()
    reference = correlation.feature_correlation(sae, rows, min_density=0.0, batch_size=100, progress=False)
    ref_norm = layers._norm_and_top_features(sae, rows, 5)
    seen = []
    real_add = correlation._Comoments.add

    def add(self, values):
        seen.append((self.dtype, self.total.dtype, self.total.device.type))
        return real_add(self, values)

    monkeypatch.setattr(correlation, "accumulation", lambda device: MPS_ANSWER)
    monkeypatch.setattr(layers, "accumulation", lambda device: MPS_ANSWER)
    monkeypatch.setattr(correlation._Comoments, "add", add)
    result = correlation.feature_correlation(sae, rows, min_density=0.0, batch_size=100, progress=False)
    assert seen and all(s == (torch.float32, torch.float64, "cpu") for s in seen)
    assert abs(result.matrix - reference.matrix).max() < 1e-4
    assert list(result.table["feature_i"]) == list(reference.table["feature_i"])
    norm, top = layers._norm_and_top_features(sae, rows, 5)
    assert abs(norm - ref_norm[0]) < 1e-4 * ref_norm[0] and top == ref_norm[1]
    pairs = correlation.top_correlated_pairs(torch.relu(rows), k=3, min_density=0.0)
    assert [p[:2] for p in pairs] == [p[:2] for p in correlation.top_correlated_pairs(torch.relu(rows).double(), k=3,
                                                                                        min_density=0.0)]


def test_accumulation_on_cpu_is_float64_on_the_device():
    assert models.accumulation("cpu") == (torch.float64, torch.device("cpu"))


def test_row_scale_sums_off_the_device_on_mps(monkeypatch):
    from saelab.training import initialise
    rows = _rows() * 7
    reference = initialise.row_scale(rows)
    monkeypatch.setattr(initialise, "accumulation", lambda device: MPS_ANSWER)
    assert abs(initialise.row_scale(rows) / reference - 1) < 1e-6   # float32 batch sums, float64 total
