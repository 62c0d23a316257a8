"""The judge interface: (prompt, response) -> (response harmful, response refusal).

Prompt harmfulness is never asked of the judge: it comes from the prompt's data source (paper
App. C). Judges are chosen in YAML by ``class_path`` (any subclass of :class:`Judge`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from waltzlit.types import JudgeVerdict, PromptRecord


class Judge(ABC):
    """Scores conversation responses for the alignment labels."""

    @abstractmethod
    def judge(self, records: Sequence[PromptRecord], responses: Sequence[str]) -> list[JudgeVerdict]:
        """One verdict per (prompt record, response) pair, in order.

        Model judges read only ``record.prompt``; the rule judge also reads ``record.prompt_harmful``
        (a non-refusal to a harmful prompt counts as harmful, as AdvBench and JailbreakBench score).

        Raises:
            JudgeError: when the judge cannot produce verdicts (e.g. a server kept failing).
        """


class JudgeError(RuntimeError):
    """A judge failed for good (after its own retries); training stops with checkpoints intact."""
