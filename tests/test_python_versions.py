"""The Python range pyproject claims is the range README's note says is tested: requires-python's lower
bound is the lowest version "tested in CI", every version below it is "not supported", and every
version from it up is "tested in CI" or "checked by hand on <date>"."""
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATUS = re.compile(r"tested in CI|checked by hand on \d{4}-\d{2}-\d{2}|not supported")


def _note() -> dict:
    """{(3, minor): status} from README's table under "## Python versions, Colab and GPUs"."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Python versions, Colab and GPUs\n(.*?)^## ", text, flags=re.S | re.M)
    assert section, "README.md has no '## Python versions, Colab and GPUs' section"
    rows = re.findall(r"^\| 3\.(\d+)( and older)? \| (.*?) \|$", section.group(1), flags=re.M)
    note = {}
    for minor, older, status in rows:
        found = STATUS.match(status)
        assert found, f"README: Python 3.{minor}: {status!r} is not one of the three statuses"
        note[(3, int(minor))] = (found.group(0), bool(older))
    return note


def test_requires_python_matches_the_readme_note():
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["requires-python"]
    match = re.fullmatch(r">=3\.(\d+)", spec)
    assert match, f"requires-python: expected '>=3.N', got {spec!r}"
    lowest = (3, int(match.group(1)))
    note = _note()
    assert note.get(lowest, (None,))[0] == "tested in CI", f"{lowest} is requires-python's bound: {note}"
    for version, (status, older) in note.items():
        if version < lowest:
            assert status == "not supported", f"Python {version} is below requires-python, README says {status!r}"
        else:
            assert status != "not supported" and not older, f"Python {version}: {status!r}"
    newest = max(note)
    assert all((3, m) in note for m in range(lowest[1], newest[1] + 1)), f"a version is missing: {sorted(note)}"
    assert sys.version_info[:2] >= lowest  # this test runs on a supported Python
