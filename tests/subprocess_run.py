"""Run Python, or saelab's command line, in a subprocess that imports this checkout's saelab."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# `saelab ARGS` without depending on an installed entry point (python -m saelab.cli has no __main__ guard)
CLI = [sys.executable, "-c", "import sys; from saelab.cli import main; sys.exit(main())"]
# runs a command as root without CAP_DAC_OVERRIDE, so that folder modes bind (as for any other user)
NO_DAC_OVERRIDE = ["/usr/bin/setpriv", "--inh-caps=-dac_override,-dac_read_search",
                   "--bounding-set=-dac_override,-dac_read_search"]


def run_python(args, timeout: float, cwd=None, **env) -> subprocess.CompletedProcess:
    """`python ARGS` with this checkout first on PYTHONPATH, $SAELAB_PROGRESS=0 and `env` added."""
    environ = {**os.environ, "SAELAB_PROGRESS": "0", **env}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd or ROOT, env=environ)


def run_cli(args, timeout: float, cwd=None, **env) -> subprocess.CompletedProcess:
    """`saelab ARGS` as `run_python` runs Python."""
    return run_python(CLI[1:] + list(args), timeout, cwd=cwd, **env)
