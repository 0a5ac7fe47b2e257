"""The house rules that DESIGN.md states, checked on the source: the import order, module and
function sizes, and no private name imported across modules."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "saelab"
MAX_MODULE_LINES = 420   # "about 400"
MAX_FUNCTION_LINES = 65   # DEVELOPERS.md: "functions under ~65"


def _modules() -> dict[str, Path]:
    """Dotted module name (without "saelab.") -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "assets" in path.relative_to(PACKAGE).parts:
            continue
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _import_order() -> list[str]:
    text = (ROOT / "DESIGN.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- import-order -->(.*?)<!-- /import-order -->", text, re.S)
    assert block, "DESIGN.md lost its import-order block"
    return [name.strip(" `\n") for name in block.group(1).split(",")]


def _imported(module: str, path: Path) -> set[str]:
    """The saelab modules (dotted, without "saelab.") that `path` imports anywhere in it."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "saelab":
                target = node.module.split(".")[1:]
            else:
                continue
            names = [a.name for a in node.names]
            candidates = [".".join(target + [n]) for n in names] if not node.module else []
            found.update(c for c in candidates if c in _modules())
            if node.module:
                found.add(".".join(target))
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".", 1)[1] for a in node.names if a.name.startswith("saelab."))
    return {m for m in found if m}


def test_every_module_is_in_designs_import_order():
    order = _import_order()
    missing = sorted(set(_modules()) - set(order) - {""})
    assert not missing, f"modules missing from DESIGN.md's import order: {missing}"


@pytest.mark.parametrize("module", sorted(m for m in _modules() if m))
def test_modules_import_only_modules_above_them(module):
    order = _import_order()
    rank = {name: i for i, name in enumerate(order)}
    path = _modules()[module]
    below = sorted(m for m in _imported(module, path)
                   if m in rank and rank[m] >= rank[module] and not module.startswith(m + "."))
    assert not below, f"saelab.{module} imports {below}, which DESIGN.md puts at or below it"


def _package(module: str) -> str:
    """The top-level part a module belongs to: its package ("sae" for "sae.tied"), or itself."""
    return module.split(".")[0]


def _packages() -> list[str]:
    return sorted({_package(m) for m in _modules() if "." in m})


def test_no_package_imports_a_package_above_it():
    """Package by package: the first position of a package in the import order is its floor, and no
    module imports from a package (or top-level module) whose floor is above its own."""
    floor: dict[str, int] = {}
    for i, name in enumerate(_import_order()):
        floor.setdefault(_package(name), i)
    upward = []
    for module, path in _modules().items():
        if not module:
            continue
        for target in _imported(module, path):
            if _package(target) != _package(module) and floor[_package(target)] > floor[_package(module)]:
                upward.append(f"saelab.{module} imports saelab.{target}, a package above its own")
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("package", _packages())
def test_every_package_says_its_job_and_is_on_designs_map(package):
    init = PACKAGE / package / "__init__.py"
    docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
    assert docstring and len(docstring.split()) >= 8, f"saelab/{package}/__init__.py: a docstring saying its job"
    design = (ROOT / "DESIGN.md").read_text(encoding="utf-8")
    tree = re.search(r"<!-- map -->(.*?)<!-- /map -->", design, re.S)
    assert tree, "DESIGN.md lost its package map"
    assert re.search(rf"^\s*{package}/\s", tree.group(1), re.M), f"DESIGN.md's map has no line for {package}/"


def test_modules_and_functions_are_small():
    too_long = []
    for module, path in _modules().items():
        source = path.read_text(encoding="utf-8")
        if source.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, "\n".join(too_long)


def test_no_private_name_crosses_a_module():
    crossings = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("saelab")):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    crossings.append(f"saelab.{module} imports {private} from {node.module or '.'}")
    assert not crossings, "\n".join(crossings)


def test_the_checks_can_fail(tmp_path):
    """The import parser sees relative, absolute and lazy imports (so the order test can fail)."""
    path = tmp_path / "probe.py"
    path.write_text("from .report import run_lab\nimport saelab.cli\n"
                    "def f():\n    from saelab.activations.collect import collect_activations\n", encoding="utf-8")
    assert _imported("probe", path) == {"report", "cli", "activations.collect"}
    assert _package("activations.collect") == "activations" and _package("report") == "report"


def test_the_types_users_catch_are_exported():
    import saelab
    from saelab.activations.collect import TruncationWarning
    from saelab.checks.core import CheckFailed
    from saelab.models import ModelUnavailableError
    assert saelab.CheckFailed is CheckFailed and issubclass(CheckFailed, AssertionError)
    assert saelab.ModelUnavailableError is ModelUnavailableError and saelab.TruncationWarning is TruncationWarning
    for name in ("batch_indices", "format_table", "notebook_layer", "notebook_layers"):   # the notebook's imports
        assert callable(getattr(saelab, name)), name
