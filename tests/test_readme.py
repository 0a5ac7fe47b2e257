"""README's "Library in five lines" runs as written (on the first texts only, to stay fast)."""
import re
import warnings
from pathlib import Path


README = Path(__file__).resolve().parents[1] / "README.md"


def _block(title: str) -> str:
    """The first ```python block after the heading `title` in README.md."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n.*?```python\n(.*?)```", text, flags=re.S | re.M)
    assert match, f"README.md has no python block under '## {title}'"
    return match.group(1)


def test_library_in_five_lines_runs(monkeypatch, capsys):
    import saelab

    real = saelab.load_texts
    monkeypatch.setattr(saelab, "load_texts", lambda split, **kw: real(split, max_texts=6, **kw))
    monkeypatch.delenv("SAELAB_MODEL", raising=False)
    code = _block("Library in five lines")
    assert "saelab.train_sae(" in code and "saelab.evaluate(" in code
    namespace = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # long texts are split into windows: no warning at all
        exec(compile(code, str(README), "exec"), namespace)
    result, sae = namespace["result"], namespace["sae"]
    assert isinstance(result, saelab.TrainResult) and result.sae is sae and not result.interrupted
    assert sae.metadata["layer"] == 2 and sae.metadata["epochs"] == 2 and sae.metadata["normalize"] is True
    rows = namespace["acts"]
    fresh = saelab.TiedSAE(sae.d_in, sae.d_sae, seed=0)   # the same start, untrained
    assert result.train_metrics.fvu < 0.8 * saelab.evaluate(fresh, rows).fvu   # it learned
    printed = capsys.readouterr().out
    assert "fvu" in printed.lower() and "l0" in printed.lower()
