"""benchmarks/gpu_check.py runs where only torch and numpy are installed (the GPU machines' image)."""

import subprocess
import sys

from conftest import ROOT

WITHOUT_GYM = """
import sys
for name in ("gymnasium", "gymnasium_robotics", "tyro"):
    sys.modules[name] = None  # importing it raises ImportError, as on a machine without it
sys.path.insert(0, "benchmarks")
import gpu_check
iql, iql_ft = gpu_check.import_scripts()
assert gpu_check.STAND_INS == ["gymnasium", "gymnasium_robotics", "tyro"], gpu_check.STAND_INS
gpu_check.EARLY = 2
data = gpu_check.in_memory_data(iql, "cpu")
plain = gpu_check.offline(iql, data, None, 2, 4, "cpu")
resumed = gpu_check.offline(iql, data, None, 2, 4, "cpu", resume_at=2)
assert gpu_check.compare(resumed[4], plain[4], 0.0)[0], "a resumed population differs"
assert not gpu_check.compare(plain[2], plain[4], 1e-4)[0], "compare() misses a difference"
grown = gpu_check.finetune(iql_ft, data, None, 4, "cpu")
print("ok", sorted(grown))
"""


def test_checks_run_with_torch_and_numpy_only():
    out = subprocess.run([sys.executable, "-c", WITHOUT_GYM], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok [2, 4]")
