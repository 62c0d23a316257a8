"""The prompt sets shipped in waltzlit/assets/prompts: checksums, licences, and loading through the
conf/ recipe with the right labels.

Counts (see each file's SOURCE.md): XSTest 250 safe + 200 unsafe, AdvBench 520 harmful,
JailbreakBench 100 harmful + 100 benign behaviors.
"""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import PROMPT_SETS, REPO_ROOT
from waltzlit.data.sources import PromptSourceConfig, build_prompt_pool, label_counts, load_prompt_source

EXPECTED = {
    "xstest": {"harmful": 200, "benign": 250},
    "advbench": {"harmful": 520, "benign": 0},
    "jailbreakbench": {"harmful": 100, "benign": 100},
}


@pytest.fixture
def recipe_sources(monkeypatch) -> list[PromptSourceConfig]:
    """The sources of conf/data/shared_eval.yaml, with its paths read from the repo root."""
    monkeypatch.chdir(REPO_ROOT)
    config = yaml.safe_load((REPO_ROOT / "conf/data/shared_eval.yaml").read_text())
    return [PromptSourceConfig(**entry) for entry in config["data"]["val_sources"]]


def test_recipe_loads_shared_files_with_their_counts(recipe_sources):
    assert [s.name for s in recipe_sources] == list(EXPECTED)
    for source in recipe_sources:
        assert label_counts(load_prompt_source(source)) == {source.name: EXPECTED[source.name]}


def test_shared_file_details():
    xstest = load_prompt_source(PromptSourceConfig(name="xstest", path=str(PROMPT_SETS / "xstest/xstest_prompts.csv")))
    assert all(r.category.startswith("contrast_") == r.prompt_harmful for r in xstest)
    jbb = str(PROMPT_SETS / "jailbreakbench")
    benign = load_prompt_source(PromptSourceConfig(name="jailbreakbench", path=jbb, split="benign"))
    harmful = load_prompt_source(PromptSourceConfig(name="jailbreakbench", path=jbb + "/harmful-behaviors.csv"))
    assert len(benign) == len(harmful) == 100
    assert {r.category for r in benign} == {r.category for r in harmful} and len({r.category for r in benign}) == 10


def test_shared_pool_dedupes_across_benchmarks(recipe_sources):
    pool = build_prompt_pool(recipe_sources)
    # 18 JailbreakBench harmful behaviors come from AdvBench; 11 of them are verbatim (up to case and
    # spacing) AdvBench goals, which the pool keeps once, under the earlier source.
    assert label_counts(pool) == {**EXPECTED, "jailbreakbench": {"harmful": 89, "benign": 100}}
    assert len(pool) == 1159


def test_shipped_files_match_their_checksums_and_carry_licences():
    import hashlib

    sums = (PROMPT_SETS / "SHA256SUMS").read_text().split("\n")
    entries = [line.split() for line in sums if line.strip()]
    assert len(entries) == 5
    for digest, name in entries:
        assert hashlib.sha256((PROMPT_SETS / name).read_bytes()).hexdigest() == digest, name
    for folder in ("xstest", "advbench", "jailbreakbench"):
        assert (PROMPT_SETS / folder / "LICENSE").is_file() and (PROMPT_SETS / folder / "SOURCE.md").is_file()


def test_shipped_sets_resolve_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    records = load_prompt_source(PromptSourceConfig(name="advbench", path="waltzlit/assets/prompts/advbench/harmful_behaviors.csv"))
    assert len(records) == 520 and all(r.prompt_harmful for r in records)
