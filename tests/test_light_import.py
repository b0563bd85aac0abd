"""`import rig` (and the CLI, the run reader, the diff) stays light: no torch, transformers or vllm."""

from __future__ import annotations

import subprocess
import sys


def test_import_rig_loads_no_heavy_stack():
    code = (
        "import sys, rig, rig.cli, rig.run.store, rig.run.spec, rig.run.suite, rig.run.runner, rig.stacks, "
        "rig.stacks.stub, rig.analysis.compare, rig.report.html, rig.telemetry.recorder, rig.telemetry.envinfo\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'vllm', 'pynvml') if m in sys.modules)\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_cli_import_loads_no_torch():
    code = "import sys\nfrom rig.cli import main\nassert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
