"""benchmarks/gpu/check.sh --dry-run: every step of the GPU check runs (CPU-sized) and lands in its
JSON, so the script is ready whenever a GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration


def test_gpu_check_dry_run_writes_every_step(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(["bash", "benchmarks/gpu/check.sh", "--dry-run", "--out", str(out)], cwd=REPO_ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["dry_run"] is True
    assert set(result["steps"]) == {"gpu_tests", "rl_step_bf16", "rl_step_qlora", "equal_work"}
    assert all(step["ok"] for step in result["steps"].values())
    for name, memory in (("rl_step_bf16", "separate"), ("rl_step_qlora", "shared_base_qlora")):
        measured = result["steps"][name]["result"]
        assert measured["memory"] == memory and measured["rl_step_reached"] == 2  # one stage-1 + one stage-2 step
        assert measured["peak_gib_planned"] > 0 and measured["stage2_step_seconds_median"] > 0
    assert "waltzlit" in result["steps"]["equal_work"]["result"]["sizes"]["tiny"]
