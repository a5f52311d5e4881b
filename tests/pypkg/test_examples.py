"""The examples of examples/python run as smoke tests on their NumPy paths (each
exits 1 when its own check fails: the divergence must fall by half, the OT pairs must
be shorter than independent ones)."""

import os
import subprocess
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "python")


@pytest.mark.parametrize("script,args", [
    ("divergence_training.py", ["--numpy", "--steps", "20", "--n", "80"]),
    ("flow_matching_ot.py", ["--numpy", "--steps", "10", "--batch", "96"]),
    ("flow_matching_ot.py", ["--numpy", "--steps", "5", "--batch", "96", "--coupling",
                             "sinkhorn"]),
    ("flow_matching_ot.py", ["--numpy", "--steps", "5", "--batch", "96", "--coupling",
                             "partners"]),
])
def test_example_runs(script, args):
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, script), *args],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
