"""Judges: (prompt, response) -> (response harmful, response refusal) (paper App. C).

Chosen in YAML by ``class_path``: ``waltzlit.judges.RuleJudge`` (phrase matching, CPU),
``WildGuardJudge`` (the paper's judge, local HF model), ``LlamaGuardJudge`` (the safeguard
baseline), ``OpenAIChatJudge`` (either, served over HTTP) and ``CachedJudge`` (wraps any of them).
None of them loads a model or opens a connection when constructed.
"""

from waltzlit.judges.base import Judge, JudgeError
from waltzlit.judges.cache import CachedJudge
from waltzlit.judges.http import OpenAIChatJudge
from waltzlit.judges.llama_guard import LlamaGuardJudge, parse_llama_guard_output
from waltzlit.judges.rule import RuleJudge
from waltzlit.judges.wildguard import WildGuardJudge, parse_wildguard_output

__all__ = [
    "CachedJudge",
    "Judge",
    "JudgeError",
    "LlamaGuardJudge",
    "OpenAIChatJudge",
    "RuleJudge",
    "WildGuardJudge",
    "parse_llama_guard_output",
    "parse_wildguard_output",
]
