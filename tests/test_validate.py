"""saelab.validate: each check accepts the good values, refuses each kind of bad value, and names the argument."""
import numpy as np
import pytest
import torch

from saelab import validate as v


def _refuses(check, *args, match):
    with pytest.raises(ValueError, match=match):
        check(*args)


# --------------------------------------------------------------------------- scalars

def test_check_int():
    assert v.check_int("n", 3) == 3 and v.check_int("n", np.int64(3)) == 3 and type(v.check_int("n", np.int32(2))) is int
    assert v.check_int("n", 0, minimum=0) == 0 and v.check_int("n", None, allow_none=True) is None
    _refuses(v.check_int, "n", 2.0, match=r"^n: expected an int, got float 2\.0$")
    _refuses(v.check_int, "n", True, match=r"^n: expected an int, got bool True$")
    _refuses(v.check_int, "n", "3", match=r"^n: expected an int, got str '3'$")
    _refuses(v.check_int, "steps", 0, 1, match=r"^steps: expected an int >= 1, got int 0$")
    _refuses(v.check_int, "seed", None, match=r"^seed: expected an int, got NoneType None$")
    with pytest.raises(ValueError, match=r"^seed: expected an int >= 0 or None, got int -1$"):
        v.check_int("seed", -1, minimum=0, allow_none=True)


def test_check_float():
    assert v.check_float("lr", 1e-3) == 1e-3 and v.check_float("lr", 2) == 2.0
    assert v.check_float("lr", np.float32(0.5)) == 0.5 and v.check_float("lr", np.float64(1e-3)) == 1e-3
    assert v.check_float("coef", 0.0, minimum=0.0) == 0.0
    _refuses(v.check_float, "lr", 0.0, 0.0, True, match=r"^lr: expected a finite number > 0\.0, got float 0\.0$")
    _refuses(v.check_float, "coef", -1.0, 0.0, match=r"^coef: expected a finite number >= 0\.0, got float -1\.0$")
    for bad in (float("nan"), float("inf"), np.float64("nan"), True, "1", None, [1.0]):
        _refuses(v.check_float, "lr", bad, match=r"^lr: expected a finite number, got ")


def test_check_bool():
    assert v.check_bool("progress", True) is True and v.check_bool("progress", np.bool_(False)) is False
    for bad in (1, 0, "yes", None):
        _refuses(v.check_bool, "progress", bad, match=r"^progress: expected True or False, got ")


def test_check_coefs_accepts_numbers_lists_tuples_and_numpy_arrays():
    assert v.check_coefs("coefs", 1e-3) == (1e-3,)
    assert v.check_coefs("coefs", np.float64(1e-3)) == (1e-3,)
    assert v.check_coefs("coefs", [1e-2, 1e-3]) == (1e-2, 1e-3)
    assert v.check_coefs("coefs", (np.float64(1e-2), 3)) == (1e-2, 3.0)
    assert v.check_coefs("coefs", np.array([1e-3])) == (1e-3,)
    assert v.check_coefs("coefs", np.array([1e-2, 1e-4], dtype=np.float32)) == pytest.approx((1e-2, 1e-4))
    assert v.check_coefs("coefs", np.array(5e-4)) == (5e-4,)
    assert all(type(c) is float for c in v.check_coefs("coefs", np.array([1e-3, 1e-2])))
    _refuses(v.check_coefs, "coefs", [], match=r"^coefs: expected a non-empty list of positive sparsity")
    _refuses(v.check_coefs, "coefs", "1e-3", match=r"^coefs: expected a non-empty list")
    _refuses(v.check_coefs, "coefs", np.zeros((2, 2)), match=r"^coefs: expected a non-empty list")
    _refuses(v.check_coefs, "coefs", [1e-3, 0.0], match=r"^coefs\[1\]: expected a finite number > 0\.0, got float 0\.0")
    _refuses(v.check_coefs, "coefs", [1e-3, float("nan")], match=r"^coefs\[1\]: expected a finite number")
    _refuses(v.check_coefs, "coefs", [1e-3, True], match=r"^coefs\[1\]: expected a finite number")
    _refuses(v.check_coefs, "coefs", [1e-3, 1e-3], match=r"^coefs: expected distinct coefficients, got \[0\.001, 0\.001\]")


def test_check_feature():
    assert v.check_feature("feature", 3, 8) == 3 and v.check_feature("feature", np.int64(7), 8) == 7
    assert v.check_feature("feature", torch.tensor(2), 8) == 2
    for bad in (8, -1, 2.0, True, None, torch.tensor(2.0), torch.tensor([1, 2])):
        _refuses(v.check_feature, "feature", bad, 8, match=r"^feature: expected an int in \[0, 7\] \(the SAE has 8 ")


# --------------------------------------------------------------------------- texts and layers

def test_check_texts():
    assert v.check_texts("texts", ["a", "b"]) == ["a", "b"] and v.check_texts("texts", ("a",)) == ["a"]
    assert v.check_texts("texts", (t for t in ["x"])) == ["x"]
    assert v.check_texts("texts", "one", allow_str=True) == ["one"]
    _refuses(v.check_texts, "texts", "one", match=r"^texts: expected a list of strings, got a single str; wrap it")
    _refuses(v.check_texts, "texts", b"one", match=r"^texts: expected a list of strings, got a single bytes")
    _refuses(v.check_texts, "texts", [], match=r"^texts: expected a non-empty list of strings, got an empty one$")
    _refuses(v.check_texts, "texts", 5, match=r"^texts: expected a list of strings, got int 5$")
    _refuses(v.check_texts, "eval_texts", ["a", 2], match=r"^eval_texts\[1\]: expected a str, got int 2$")


def test_check_layer():
    assert v.check_layer("layer", 2, 4) == 2 and v.check_layer("layer", -1, 4) == 3
    assert v.check_layer("layer", np.int64(0), 4) == 0
    _refuses(v.check_layer, "layer", 4, 4, match=r"^layer: expected an int in \[0, 3\] \(the model has n_layers=4")
    _refuses(v.check_layer, "layer", -5, 4, match=r"^layer: expected an int in \[0, 3\]")
    for bad in (1.0, True, "1", None):
        _refuses(v.check_layer, "layer", bad, 4, match=r"^layer: expected an int \(a layer number in \[0, 3\]\), got ")


def test_check_layers():
    assert v.check_layers("layers", 1, 4) == (1,) and v.check_layers("layers", [3, 0, -2], 4) == (3, 0, 2)
    _refuses(v.check_layers, "layers", [3, 0, -1], 4, match=r"^layers: expected distinct layers, got layer 3 twice")
    _refuses(v.check_layers, "layers", [1, 1], 4, match=r"^layers: expected distinct layers, got layer 1 twice")
    assert v.check_layers("layers", (np.int64(2),), 4) == (2,) and v.check_layers("layers", np.array([0, 1]), 4) == (0, 1)
    _refuses(v.check_layers, "layers", [1.0], 4, match=r"^layers\[0\]: expected an int \(a layer number")  # a type error
    _refuses(v.check_layers, "layers", [0, 9], 4, match=r"^layers\[1\]: expected an int in \[0, 3\]")
    _refuses(v.check_layers, "layers", [], 4, match=r"^layers: expected at least one layer")
    _refuses(v.check_layers, "layers", "0", 4, match=r"^layers: expected an int or a list of ints")
    _refuses(v.check_layers, "layers", 1.5, 4, match=r"^layers: expected an int or a list of ints")
    _refuses(v.check_layers, "layers", True, 4, match=r"^layers: expected an int or a list of ints")


# --------------------------------------------------------------------------- models and hooks

class _Stub:
    cfg = object()


def test_check_model(model):
    assert v.check_model("model", model) is model
    assert v.check_model("model", _Stub(), needs=("cfg",)).__class__ is _Stub
    _refuses(v.check_model, "model", "gpt2", match=r"^model: expected a TransformerLens HookedTransformer .*got str")
    _refuses(v.check_model, "model", _Stub(), ("cfg", "W_U"), match=r"^model: expected a TransformerLens")
    no_tokenizer = _Stub()
    no_tokenizer.tokenizer = None
    _refuses(v.check_model, "model", no_tokenizer, ("cfg", "tokenizer"), match=r"^model: expected a model with a tokenizer")


def test_check_hook(model):
    assert v.check_hook("hook", "resid_post", model, [0, 2]) == {0: "blocks.0.hook_resid_post",
                                                                2: "blocks.2.hook_resid_post"}
    assert v.check_hook("hook", "mlp_out", model, [1]) == {1: "blocks.1.hook_mlp_out"}
    _refuses(v.check_hook, "hook", "nonsense", model, [0], match=r"^hook: expected a hook name such as .*'nonsense'")
    _refuses(v.check_hook, "hook", "", model, [0], match=r"^hook: expected a hook name such as 'resid_post'")
    _refuses(v.check_hook, "hook", 3, model, [0], match=r"^hook: expected a hook name .*got int 3")
    _refuses(v.check_hook, "hook", "pattern", model, [0], match=r"^hook: expected a per-token hook .*attention")


# --------------------------------------------------------------------------- rows

def test_check_rows_and_activations(model):
    from saelab.activations.collect import collect_activations

    rows = torch.randn(5, 3)
    assert v.check_rows("x", rows) == 5 and v.check_rows("x", rows, width=3) == 5
    assert v.check_activations("x", rows) is rows
    acts = collect_activations(model, ["Hello there, world."], [0, 1], progress=False)
    assert v.check_rows("acts", acts[1], width=model.cfg.d_model) == len(acts)
    assert v.is_activations(acts) and not v.is_activations(rows) and v.row_width(acts[0]) == model.cfg.d_model
    _refuses(v.check_rows, "acts", acts, match=r"^acts: expected a single-layer Activations, got one with layers "
                                                r"\[0, 1\]; select one with acts\[0\]")
    _refuses(v.check_rows, "x", rows, 4, match=r"^x: expected rows of width d_model = 4 \(the SAE's\), got 3$")
    _refuses(v.check_rows, "x", torch.zeros(0, 3), match=r"^x: expected at least one row, got 0 rows$")
    for bad in (torch.zeros(3), torch.zeros(2, 3, dtype=torch.int64), np.zeros((2, 3)), None):
        _refuses(v.check_rows, "eval_activations", bad,
                 match=r"^eval_activations: expected a single-layer Activations or a float tensor")


def test_check_index():
    assert v.check_index("index", [2, 0], 3).tolist() == [2, 0]
    assert v.check_index("index", np.array([1]), 3).dtype == torch.int64
    assert v.check_index("index", range(3), 3).tolist() == [0, 1, 2]
    assert v.check_index("index", torch.tensor([], dtype=torch.int32), 3).tolist() == []
    _refuses(v.check_index, "index", [3], 3, match=r"^index: row numbers must be in \[0, 3\), got min 3, max 3$")
    _refuses(v.check_index, "index", [-1], 3, match=r"^index: row numbers must be in \[0, 3\)")
    for bad in (torch.tensor([0.0]), torch.tensor([[0]]), torch.tensor([True]), "0", 1):
        _refuses(v.check_index, "index", bad, 3, match=r"^index: expected a 1-D integer tensor of row numbers, got ")


# --------------------------------------------------------------------------- validated once, at the door

def _validate_entries(call, watched) -> list[str]:
    """The validate.py functions entered from outside validate.py, during `call()`, with `watched` among
    their arguments (sys.setprofile sees every Python call)."""
    import sys
    entries = []

    def profile(frame, event, arg):
        if event != "call" or frame.f_code.co_filename != v.__file__:
            return
        if frame.f_back is not None and frame.f_back.f_code.co_filename == v.__file__:
            return                                     # a check calling another check: one entry
        if any(value is watched for value in frame.f_locals.values()):
            entries.append(frame.f_code.co_name)
    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    return entries


@pytest.mark.parametrize("kind", ["tensor", "Activations"])
def test_the_sweep_checks_its_activations_once(model, train_texts, kind):
    """sparsity_sweep -> train_stacked -> evaluate: `activations` enters validate.py at the door only."""
    import saelab
    acts = saelab.collect_activations(model, train_texts[:2], 1, max_tokens=200, progress=False)[1]
    rows = acts if kind == "Activations" else acts.rows.clone()
    held_out = saelab.collect_activations(model, train_texts[2:4], 1, max_tokens=100, progress=False)[1]
    entries = _validate_entries(lambda: saelab.sparsity_sweep(rows, coefs=[0.5, 1.0], eval_activations=held_out,
                                                              steps=3, progress=False), rows)
    assert entries == ["check_rows", "row_width"], entries     # the rows at the door, then their width: twice


def test_the_door_still_refuses_what_the_inside_trusts():
    import saelab
    with pytest.raises(ValueError, match=r"activations: expected a single-layer Activations or a float tensor"):
        saelab.sparsity_sweep(torch.zeros(10, 4, dtype=torch.int64), coefs=[1.0], steps=1, progress=False)
    with pytest.raises(ValueError, match=r"eval_activations: expected rows of width d_model = 4"):
        saelab.sparsity_sweep(torch.zeros(10, 4), coefs=[1.0], eval_activations=torch.zeros(3, 5), steps=1,
                              progress=False)


def test_new_checks_name_the_argument():
    def refuses(fn, *args, match):
        with pytest.raises(ValueError, match=match):
            fn(*args)
    refuses(v.check_choice, "kind", "poetry", ("prose", "code"), match=r"^kind: expected one of \['prose', 'code'\]")
    assert v.check_choice("kind", None, ("prose",), allow_none=True) is None
    refuses(v.check_choice, "flag", 1, (True, False), match=r"^flag: expected one of")   # 1 is not True here
    assert v.check_context_length("context_length", None, 256) == 256
    refuses(v.check_context_length, "context_length", 300, 256, match=r"at most the model's n_ctx \(256\)")
    refuses(v.check_context_length, "context_length", 1, 256, match=r"an int >= 2")
    assert v.check_row("row", -1, 5) == 4 and v.check_row("row", torch.tensor(2), 5) == 2
    refuses(v.check_row, "row", 5, 5, match=r"^row: expected an int in \[0, 5\)")
    refuses(v.check_path, "cache_dir", 3, match=r"^cache_dir: expected a path, got int 3")
    weight = torch.zeros(3, 4)
    refuses(v.check_sae_input, "x", torch.zeros(2, 4, dtype=torch.float64), 4, "d_in", weight,
            match=r"expected torch.float32 on cpu \(the SAE's dtype and device\), got torch.float64")
    refuses(v.check_sae_input, "x", torch.full((2, 4), float("nan")), 4, "d_in", weight, match="finite values")


@pytest.mark.parametrize("value", ["https://example.org/my course/saelab 0.1.whl",
                                   "/nonexistent/dir/saelab-0.1.0-py3-none-any.whl",
                                   "--index-url=https://evil.example/simple saelab", "-e.", "saelab",
                                   "x.whl", "ftp://example.org/saelab-0.1.0-py3-none-any.whl", "https:///nohost.whl",
                                   "https://example.org/saelab.whl", "two\nlines", "", None])
def test_check_install_source_refuses_what_pip_would_misread(value):
    with pytest.raises(ValueError, match=r"^install_source: expected|^install_source: the wheel"):
        v.check_install_source("install_source", value)


def test_check_install_source_accepts_wheels_and_urls(tmp_path):
    wheel = tmp_path / "saelab-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    for ok in (str(wheel), "dist/saelab-0.1.0-py3-none-any.whl", "https://example.org/c/saelab-0.1.0-py3-none-any.whl",
               "git+https://github.com/example/saelab.git@v0.1", "file:///srv/saelab-0.1.0-py3-none-any.whl"):
        assert v.check_install_source("install_source", ok) == ok


@pytest.mark.parametrize("value", ["..", ".hidden", "a/b", "", "lab c4", "x\n"])
def test_check_file_name(value):
    with pytest.raises(ValueError, match="lab: expected a plain file name"):
        v.check_file_name("lab", value)
    assert v.check_file_name("lab", "lab_c4.v2-final") == "lab_c4.v2-final"
