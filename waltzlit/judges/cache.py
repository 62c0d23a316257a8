"""A verdict cache around any judge: the same (prompt, response) is judged once.

Rollouts repeat themselves (identical refusals to the same prompt, re-evaluation of the same
checkpoint), and a 7B judge costs as much as the policy's own generation. The key is the sha256 of
(namespace, prompt, prompt_harmful, response): ``prompt_harmful`` is part of it because the
:class:`~waltzlit.judges.rule.RuleJudge`'s verdict depends on it, and the namespace (default: the
wrapped judge's class) keeps verdicts of different judges apart in one file.

With ``path`` the cache is also a JSONL file: read at start, appended to (and flushed) as new
verdicts arrive, so a restarted run reuses them. A truncated last line, as a crash can leave, is
skipped. Verdicts that were parse errors are not cached by default, so a later call asks again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from waltzlit.judges.base import Judge
from waltzlit.types import JudgeVerdict, PromptRecord

log = logging.getLogger(__name__)


def verdict_key(namespace: str, prompt: str, prompt_harmful: bool, response: str) -> str:
    """The cache key of one pair (hex sha256 of an unambiguous JSON encoding)."""
    blob = json.dumps([namespace, prompt, bool(prompt_harmful), response], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class CachedJudge(Judge):
    """Wraps ``judge`` with an in-memory (optionally JSONL-persisted) verdict cache.

    Args:
        judge: the judge to ask on a cache miss.
        path: JSONL file to load from and append to; None keeps the cache in memory only.
        namespace: part of every key; None uses the wrapped judge's class name. Set it (e.g. to the
            judge model's id) when one file serves differently configured judges.
        cache_parse_errors: also keep verdicts the judge could not parse.
    """

    def __init__(
        self, judge: Judge, path: str | None = None, namespace: str | None = None, cache_parse_errors: bool = False
    ) -> None:
        self.inner = judge
        self.namespace = namespace if namespace is not None else type(judge).__qualname__
        self.cache_parse_errors = cache_parse_errors
        self.path = Path(path) if path else None
        self.verdicts: dict[str, JudgeVerdict] = {}
        self.hits = 0
        self.misses = 0
        if self.path is not None and self.path.exists():
            self._load(self.path)

    def _load(self, path: Path) -> None:
        bad = 0
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    row = json.loads(line)
                    self.verdicts[row["key"]] = JudgeVerdict(
                        bool(row["response_harmful"]),
                        bool(row["response_refusal"]),
                        bool(row.get("parse_error", False)),
                    )
                except (ValueError, KeyError, TypeError):
                    bad += 1
        if bad:
            log.warning("judge cache %s: skipped %d unreadable lines", path, bad)

    def _append(self, rows: list[tuple[str, JudgeVerdict]]) -> None:
        if self.path is None or not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            for key, v in rows:
                record = {"key": key, "response_harmful": v.response_harmful, "response_refusal": v.response_refusal}
                handle.write(json.dumps({**record, "parse_error": v.parse_error}) + "\n")
            handle.flush()

    def __len__(self) -> int:
        return len(self.verdicts)

    def judge(self, records: Sequence[PromptRecord], responses: Sequence[str]) -> list[JudgeVerdict]:
        if len(records) != len(responses):
            raise ValueError(f"need one response per record, got {len(records)} records and {len(responses)} responses")
        keys = [verdict_key(self.namespace, r.prompt, r.prompt_harmful, c) for r, c in zip(records, responses)]
        # Ask the inner judge once per distinct missing key, in first-seen order.
        missing: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key not in self.verdicts and key not in missing:
                missing[key] = i
        fresh: dict[str, JudgeVerdict] = {}
        if missing:
            index = list(missing.values())
            answers = self.inner.judge([records[i] for i in index], [responses[i] for i in index])
            fresh = dict(zip(missing, answers))
            keep = [(k, v) for k, v in fresh.items() if self.cache_parse_errors or not v.parse_error]
            self.verdicts.update(keep)
            self._append(keep)
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        return [fresh[key] if key in fresh else self.verdicts[key] for key in keys]
