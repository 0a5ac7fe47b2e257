"""Regenerating on another CPU is not a diff: solutions executed under one of torch's CPU kernels
(ATEN_CPU_CAPABILITY) pass `check_outputs` under the others and at another thread count, because
`saelab notebooks execute` trains and collects in float64 (`saelab.precision`). In float32 the same lab's
trained features differ between kernels (training amplifies the kernels' rounding), which the check
reports, naming the cell by its number and heading."""
import pytest
import torch

from saelab.course import notebooks, regenerate

#: A small lab whose training is chaotic like the real one's: 750 steps of the lab's recipe on tiny's rows.
LAB = '''\
# A small lab: the lab's collection and recipe at a small size.

# %%
import saelab
model = saelab.load_model("tiny", device="cpu")
rows = saelab.collect_activations(model, saelab.load_texts("train")[:60], [2], max_tokens=12_000)[2]
held_out = saelab.collect_activations(model, saelab.load_texts("test")[:30], [2], max_tokens=5_000)[2]
sae = saelab.TiedSAE(model.cfg.d_model, 512, seed=0)
result = saelab.train_sae(sae, rows, 4.0, config=saelab.TrainConfig.lab(batch_size=32))
print(len(rows), "rows; FVU", round(result.train_metrics.fvu, 4), "L0", round(result.train_metrics.l0, 3))

# %% [markdown]
# ## Part 4: the top pair

# %%
pair = saelab.feature_correlation(sae, held_out).table.iloc[0]
print("top pair", int(pair.feature_i), int(pair.feature_j), "r", round(pair.correlation, 4))
'''


def kernels() -> list[str]:
    """The kernels torch can run here besides "default" (avx512 only where the CPU has it)."""
    return ["avx2"] + (["avx512"] if "AVX512" in torch.backends.cpu.get_cpu_capability() else [])


@pytest.mark.slow
def test_solutions_regenerated_under_one_kernel_pass_the_check_under_the_others(tmp_path):
    source = tmp_path / "lab_k.py"
    source.write_text(LAB, encoding="utf-8")
    notebooks.build(tmp_path, [source])
    path = tmp_path / "solutions" / "lab_k.ipynb"
    assert regenerate.execute(tmp_path, [source], env={"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "2"}) \
        == [(path, "written")]
    assert "top pair" in path.read_text(encoding="utf-8")
    for kernel in kernels():
        assert regenerate.check_outputs(tmp_path, [source], env={"ATEN_CPU_CAPABILITY": kernel,
                                                                 "OMP_NUM_THREADS": "1"}) == [], kernel
    # the same lab in float32: another kernel trains other features, and the check names the cells that show them
    float32 = {"SAELAB_PRECISION": "float32", "OMP_NUM_THREADS": "1"}
    regenerate.execute(tmp_path, [source], env={"ATEN_CPU_CAPABILITY": "default", **float32})
    problems = regenerate.check_outputs(tmp_path, [source], env={"ATEN_CPU_CAPABILITY": "avx2", **float32})
    ids = notebooks.cell_ids(notebooks.read_source(source))
    named = f"{path}: cell 3 (Part 4: the top pair) [id {ids[2]}]: outputs changed beyond 3 significant digits ("
    assert [p for p in problems if p.startswith(named) and " r 0." in p], problems
