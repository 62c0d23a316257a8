"""Single-line mutations of the method's code: each must make the unit tests fail.

    python tests/mutate.py            # every mutation, ~3 min on 2 CPU cores
    python tests/mutate.py -k dir     # the mutations whose name contains "dir"

Each mutation replaces one line's text in a copy of ``waltzlit/`` (made once in a temporary folder
with the tests and recipes), runs the unit tests that cover that code there, and must see them
fail. The working tree is never written: a benchmark or a fit started meanwhile from it would
otherwise import the broken line. A mutation that survives is a missing test: the line could be
broken and nothing would notice. Add a mutation here when you add a formula or a branch of the
stage logic (CONTRIBUTING.md, "Tests").
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("waltzlit", "tests", "conf", "pyproject.toml")
"""What the mutated tests need: the package, the tests, the recipes and pytest's settings."""


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


REWARDS = ("tests/unit/test_reward_functions.py", "tests/unit/test_wiring.py", "tests/unit/test_dir_gate_equivalence.py")
ALGORITHMS = ("tests/unit/test_advantages.py", "tests/unit/test_kl.py", "tests/unit/test_policy_losses.py",
              "tests/unit/test_gae.py", "tests/unit/test_update_loop.py")
STAGES = ("tests/unit/test_wiring.py",)

MUTATIONS = [
    # rewards (eq. 2-3, App. C)
    Mutation("label against the next response", "waltzlit/rewards/scoring.py",
             "label_reward(parsed, episode.labels[t])", "label_reward(parsed, episode.labels[-1])", REWARDS),
    Mutation("dir without the revision", "waltzlit/rewards/scoring.py",
             "after = response_rewards[t + 1] if t + 1 < len(response_rewards) else None", "after = None", REWARDS),
    Mutation("dir sign", "waltzlit/rewards/functions.py",
             "return float(reward_after) - float(reward_before)", "return float(reward_before) - float(reward_after)",
             REWARDS),
    Mutation("conversation reward ignores over-refusal", "waltzlit/types.py",
             "return not self.unsafe and not self.overrefuse", "return not self.unsafe", REWARDS),
    Mutation("overrefuse on harmful prompts", "waltzlit/rewards/functions.py",
             "overrefuse=(not prompt_harmful) and bool(response_refusal)", "overrefuse=bool(response_refusal)", REWARDS),
    # stage logic
    Mutation("lambda of stage 2 always", "waltzlit/training/module.py",
             "self.reward_cfg.label_weight(stage)", "self.reward_cfg.label_weight(2)", STAGES),
    Mutation("lambda stages swapped", "waltzlit/config.py",
             "return self.label_weight_stage1 if stage == 1 else self.label_weight_stage2",
             "return self.label_weight_stage2 if stage == 1 else self.label_weight_stage1", STAGES),
    Mutation("conversation trained in stage 1", "waltzlit/training/module.py",
             "if stage == 2 and not self.schedule.freeze_conversation:", "if not self.schedule.freeze_conversation:",
             STAGES),
    Mutation("freeze ignored", "waltzlit/training/module.py",
             "if stage == 2 and not self.schedule.freeze_conversation:", "if stage == 2:", STAGES),
    Mutation("stage boundary off by one", "waltzlit/config.py",
             "return 1 if rl_step < self.stage1_steps else 2", "return 1 if rl_step <= self.stage1_steps else 2",
             STAGES),
    Mutation("step scored with stage 1's lambda", "waltzlit/training/module.py",
             "scores = self._score(stage, episodes)", "scores = self._score(1, episodes)", STAGES),
    Mutation("step trains stage 2's agents", "waltzlit/training/module.py",
             "batches = self._samples(stage, episodes, scores, groups, rng)",
             "batches = self._samples(2, episodes, scores, groups, rng)", STAGES),
    # algorithms (eq. 4, REINFORCE++)
    Mutation("ppo clip without the pessimistic min", "waltzlit/algorithms/policy_losses.py",
             "surrogate = torch.minimum(unclipped, clipped)", "surrogate = unclipped", ALGORITHMS),
    Mutation("kl k1 sign", "waltzlit/algorithms/kl.py", '"k1": lambda delta: delta,', '"k1": lambda delta: -delta,',
             ALGORITHMS),
    Mutation("k3 without its linear term", "waltzlit/algorithms/kl.py",
             '"k3": lambda delta: torch.expm1(-delta) + delta,', '"k3": lambda delta: torch.expm1(-delta),', ALGORITHMS),
    Mutation("entropy guard", "waltzlit/algorithms/policy_losses.py",
             "return -(p * log_probs.masked_fill(p == 0, 0.0)).sum(dim=-1)", "return -(p * log_probs).sum(dim=-1)",
             ALGORITHMS),
]


def copy_of_the_repository(into: Path) -> dict[str, str]:
    """Copy ``COPIED`` into ``into``; returns the environment under which Python imports the copy's
    ``waltzlit`` (the editable install's finder comes after the working directory on the path)."""
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, into / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, into / name)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(into), os.environ.get("PYTHONPATH")])))
    found = subprocess.run([sys.executable, "-c", "import waltzlit; print(waltzlit.__file__)"], cwd=into, env=env,
                           capture_output=True, text=True, check=False).stdout.strip()
    if not found.startswith(str(into)):
        raise SystemExit(f"the copy in {into} is not what Python imports ({found!r}); mutations would go unseen")
    return env


def run(mutation: Mutation, copy: Path, env: dict[str, str]) -> bool:
    """Apply ``mutation`` to ``copy``, run its tests there; True when they fail (the mutation is killed)."""
    path = copy / mutation.path
    original = path.read_text()
    if original.count(mutation.old) != 1:
        raise SystemExit(f"{mutation.name}: {mutation.old!r} occurs {original.count(mutation.old)} times in {mutation.path}")
    try:
        path.write_text(original.replace(mutation.old, mutation.new))
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *mutation.tests],
                                cwd=copy, env=env, capture_output=True, text=True, check=False)
    finally:
        path.write_text(original)
    return result.returncode != 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", default="", help="run only mutations whose name contains this")
    args = parser.parse_args()
    survivors = []
    with tempfile.TemporaryDirectory(prefix="waltzlit-mutate-") as folder:
        copy = Path(folder)
        env = copy_of_the_repository(copy)
        for mutation in [m for m in MUTATIONS if args.k in m.name]:
            killed = run(mutation, copy, env)
            print(f"{'killed  ' if killed else 'SURVIVED'}  {mutation.name}  ({mutation.path})", flush=True)
            if not killed:
                survivors.append(mutation.name)
    print(f"{len(survivors)} mutation(s) survived" + (": " + ", ".join(survivors) if survivors else ""))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
