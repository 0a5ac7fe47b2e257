"""run_lab end to end on a small run: the report's files exist, its tables hold sane numbers that
match the saved SAEs, and the SAE folders load."""
import pandas as pd
import pytest
import torch

import dataclasses

from saelab import report as report_module
from saelab import report_page
from saelab.training.lab_settings import COEF, SWEEP_COEFS, lab_settings
from saelab.report import run_lab
from saelab.training.config import TrainConfig

pytestmark = pytest.mark.slow  # every test here runs the whole lab (run_lab)

MAX_TOKENS, EVAL_TOKENS, EPOCHS = 800, 600, 10
STEPS = 4 * EPOCHS  # 800 rows in batches of 256: 4 steps per epoch
#: A small lab: the lab's recipe on 800 rows for 10 epochs (steps follow the rows), 3 CE texts.
SMALL = dataclasses.replace(lab_settings("tiny", max_tokens=MAX_TOKENS), eval_tokens=EVAL_TOKENS, ce_texts=3,
                            train=TrainConfig.lab(epochs=EPOCHS, progress=False))


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory):
    import torch
    out = tmp_path_factory.mktemp("run")
    with torch.no_grad():                      # the caller's grad mode: run_lab must leave it as it was
        path = run_lab("tiny", out, seed=0, device="cpu", settings=SMALL, progress=False)
        assert not torch.is_grad_enabled()
    return out, path


def test_every_unit_names_a_column_the_report_shows(lab_run):
    import pandas as pd
    out, _ = lab_run
    columns = set().union(*(pd.read_csv(f).columns for f in (out / "tables").glob("*.csv")))
    assert set(report_page.UNITS) <= columns, set(report_page.UNITS) - columns


def test_report_page_figures_and_cards(lab_run):
    out, path = lab_run
    assert path == out / "report.html"
    page = path.read_text(encoding="utf-8")
    for heading in ("Part 2 (exercise 2): Activations", "Part 3 (exercise 3): Sparsity sweep",
                    "Part 4 (exercise 4): Feature co-activation", "Part 5 (exercise 5): Early vs late layers",
                    "Part 6: Feature cards", "Glossary", "nats", "per dimension", "cards/"):
        assert heading in page
    assert "saelab run --model tiny --seed 0" in page and page.count("data:image/png;base64,") >= 5
    figures = {p.name for p in (out / "figures").iterdir()}
    assert {"bos_norms.png", "sparsity_tradeoff.png", "sparsity_training.png", "layer_comparison.png"} <= figures
    cards = sorted((out / "cards").glob("feature_*.html"))
    assert len(cards) == report_module.N_CARDS


def test_sweep_table_is_sane_and_matches_the_saved_saes(lab_run, model, test_texts):
    from saelab.activations.collect import collect_activations
    from saelab.metrics import evaluate
    from saelab.sae.tied import TiedSAE

    out, _ = lab_run
    t = pd.read_csv(out / "tables" / "sparsity_sweep.csv")
    assert list(t["coef"]) == list(SWEEP_COEFS) and (t["n_tokens"] == EVAL_TOKENS).all()
    n_features = 4 * model.cfg.d_model
    assert ((t["fvu"] > 0) & (t["fvu"] < 1.5)).all() and ((t["l0"] > 0) & (t["l0"] <= n_features)).all()
    assert (t["fvu"] - (1 - t["explained_variance"])).abs().max() < 1e-12
    assert t["l0"].iloc[-1] < 0.7 * t["l0"].iloc[0]  # coef 8 is far sparser than coef 1e-3
    assert t["ce_loss_recovered"].between(-1, 1.01).all()
    test_acts = collect_activations(model, test_texts, [2], max_tokens=EVAL_TOKENS, progress=False)[2]
    for coef, fvu, l0 in zip(t["coef"], t["fvu"], t["l0"]):
        sae = TiedSAE.load(out / "saes" / f"sweep_layer2_coef{coef:g}", device="cpu")
        assert sae.metadata["sparsity_coef"] == coef and sae.metadata["steps"] == STEPS and sae.metadata["layer"] == 2
        m = evaluate(sae, test_acts)
        # the saved folder holds W_dec = s W and W_enc = W.T / s (input_scale folded in): 1-ulp rounding
        assert m.fvu == pytest.approx(fvu, rel=1e-6) and m.l0 == pytest.approx(l0, rel=1e-6)
    split = pd.read_csv(out / "tables" / "train_vs_heldout.csv")
    assert list(split["coef"]) == list(SWEEP_COEFS) and (split["fvu_held_out"] == t["fvu"]).all()


def test_layer_and_other_tables(lab_run, model):
    from saelab.sae.tied import TiedSAE

    out, _ = lab_run
    layers = pd.read_csv(out / "tables" / "layer_comparison.csv")
    assert list(layers["layer"]) == [1, 3] and (layers["activation_norm"].diff().iloc[1:] > 0).all()
    for layer in (1, 3):
        sae = TiedSAE.load(out / "saes" / f"layer{layer}_coef{COEF:g}", device="cpu")
        assert sae.metadata["layer"] == layer and torch.isfinite(sae.W_dec).all()
    prompts = pd.read_csv(out / "tables" / "layer_test_prompts.csv")
    assert len(prompts) == 4 * 2 and prompts["n_active"].between(0, 4 * model.cfg.d_model).all()
    bos = pd.read_csv(out / "tables" / "bos_norms.csv")
    assert bos["mean_norm"].iloc[0] > bos["mean_norm"].iloc[1] and bos["max_distance_to_first_row"].iloc[0] < 1e-3
    pairs = pd.read_csv(out / "tables" / "top_correlated_pairs.csv")
    assert (pairs["feature_i"] < pairs["feature_j"]).all() and pairs["correlation"].between(-1, 1).all()
    assert list(pairs["correlation"]) == sorted(pairs["correlation"], reverse=True)


def _run_small(out, seed, **kw):
    return run_lab("tiny", out, seed=seed, device="cpu", settings=SMALL, progress=False, **kw)


def test_manifest_lists_every_file_and_the_settings(lab_run):
    import json
    out, _ = lab_run
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["model"], manifest["seed"], manifest["settings"]["max_tokens"]) == ("tiny", 0, MAX_TOKENS)
    assert manifest["settings"]["train"]["normalize"] is True and manifest["settings"]["coef"] == COEF
    files = {p.relative_to(out).as_posix(): p.stat().st_size for p in out.rglob("*") if p.is_file()}
    assert manifest["files"] == {k: v for k, v in files.items() if k != "manifest.json"}
    assert not [p for p in out.parent.iterdir() if ".saelab-tmp-" in p.name]


def test_a_failed_rerun_keeps_the_old_run_and_a_finished_one_replaces_it(lab_run, tmp_path, monkeypatch):
    import json
    import shutil
    old, _ = lab_run
    out = tmp_path / "run"
    shutil.copytree(old, out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    def fail(lab):
        raise RuntimeError("injected mid-run")
    with monkeypatch.context() as m:
        m.setattr(report_module, "_layers_section", fail)
        with pytest.raises(RuntimeError, match="injected"):
            _run_small(out, seed=1)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert json.loads((out / "manifest.json").read_text())["seed"] == 0
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temp folder left
    (out / "cards" / "feature_999999.html").write_text("a card of my own")   # not in the manifest: refused
    with pytest.raises(ValueError, match=r"holds \['cards/feature_999999.html'\]"):
        _run_small(out, seed=1)
    (out / "cards" / "feature_999999.html").unlink()
    _run_small(out, seed=1)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 1
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == {*manifest["files"], "manifest.json"}
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_a_killed_run_leaves_the_old_one_whole(lab_run, tmp_path):
    import json
    import shutil
    import signal
    import subprocess
    import sys
    import time
    from subprocess_run import ROOT
    old, _ = lab_run
    out = tmp_path / "run"
    shutil.copytree(old, out)
    code = ("import sys, dataclasses; from saelab.report import run_lab; from saelab.training.lab_settings import lab_settings; "
            "from saelab.training.config import TrainConfig; "
            f"s = dataclasses.replace(lab_settings('tiny', max_tokens={MAX_TOKENS}), train=TrainConfig.lab(steps=100000)); "
            "run_lab('tiny', sys.argv[1], seed=1, device='cpu', settings=s, progress=False)")
    import os
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SAELAB_PROGRESS": "0"}
    child = subprocess.Popen([sys.executable, "-c", code, str(out)], stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in child.stderr:  # kill it in the middle of the sweep, with files already written
            if line.startswith("[3/"):
                time.sleep(1)
                break
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=600)
    assert json.loads((out / "manifest.json").read_text())["seed"] == 0
    assert sorted(p.name for p in (out / "cards").iterdir()) == sorted(p.name for p in (old / "cards").iterdir())
    _run_small(out, seed=1)
    assert json.loads((out / "manifest.json").read_text())["seed"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # the killed run's temp was reclaimed


def test_steering_and_ablation_sections(lab_run):
    out, path = lab_run
    page = path.read_text(encoding="utf-8")
    for heading in ("Part 7 (exercise 7): Steering", "Part 8 (exercise 8): Ablation", "saelab.pick_features",
                    "Steering (Part 7)", "Ablation (Part 8)"):
        assert heading in page
    assert page.index("Part 6: Feature cards") < page.index("Part 7 (exercise 7)") < page.index("Glossary")
    table = pd.read_csv(out / "tables" / "steering_and_ablation.csv")
    assert len(table) == 2 and table.feature.nunique() == 2
    assert (table.tokens_firing > 0).all()
    assert (table.delta_loss_silent.abs() < 0.02).all()          # removing nothing costs about nothing
    assert (table.delta_logprob_top_alpha2 > 0).all()            # the direction promotes its own top tokens
