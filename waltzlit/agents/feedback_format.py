"""Parse the feedback agent's JSON verdict (paper §2.1) without ever raising.

The feedback agent must answer with one JSON object holding ``reasoning`` (string), ``unsafe``
(bool), ``overrefuse`` (bool) and ``feedback`` (string). Models wrap JSON in code fences or prose,
so the parser accepts:

* the whole text (optionally inside one ````` ```json ````` fence) being a JSON object;
* otherwise the first balanced ``{...}`` span in the text that decodes with :func:`json.loads`
  and has the four fields with the right types.

Anything else gives ``ParsedFeedback(valid=False, error=...)``, which the format reward scores 0.
The parser is strict about types: ``"true"`` (a string) is not a boolean, and ``1`` is not either,
because the format reward rewards *well-formed* JSON, not text a lenient reader could guess at.
Extra keys are allowed. ``eval`` is never used.
"""

from __future__ import annotations

import json
import re

from waltzlit.types import ParsedFeedback

FEEDBACK_KEYS: tuple[str, ...] = ("reasoning", "unsafe", "overrefuse", "feedback")
"""The four fields in canonical order."""

_KEY_TYPES: dict[str, type] = {"reasoning": str, "unsafe": bool, "overrefuse": bool, "feedback": str}

_MAX_CANDIDATES = 64
"""At most this many ``{`` start positions are tried, so hostile text cannot make parsing quadratic."""

_SCAN_BUDGET = 4 * 8_192
"""Characters the brace matcher may read over all candidates together: an unclosed ``{`` costs a
scan to the end of the text, and 64 of them over 8 KB took ~0.1 s on a loaded CPU. Four texts'
worth leaves room for a few unclosed braces before a real verdict."""

_FENCE = re.compile(r"^```[A-Za-z0-9_-]*[ \t]*\n?(.*?)\n?```$", re.DOTALL)


def render_feedback_json(reasoning: str, unsafe: bool, overrefuse: bool, feedback: str) -> str:
    """One compact JSON object with the four fields in canonical order (for demonstrations)."""
    payload = {"reasoning": reasoning, "unsafe": bool(unsafe), "overrefuse": bool(overrefuse), "feedback": feedback}
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


MAX_FEEDBACK_CHARS = 8_192
"""Only the first 8 KB of an output are parsed. A verdict is a few hundred characters (its length
is bounded by ``max_new_tokens``); without a bound, a 1.8 MB deeply nested string took 13 s, and
with it (and the brace matcher's ``_SCAN_BUDGET``) no single output costs more than ~10 ms
(tests/unit/test_fuzz_parsers.py)."""


def parse_feedback(text: str) -> ParsedFeedback:
    """Read a feedback verdict from model output (its first ``MAX_FEEDBACK_CHARS`` characters);
    invalid output yields ``valid=False`` and a reason."""
    if not isinstance(text, str):
        return _invalid(f"expected a string, got {type(text).__name__}")
    stripped = text[:MAX_FEEDBACK_CHARS].strip()
    if not stripped:
        return _invalid("empty text")

    # Fast path: the whole answer (or the whole fenced block) is JSON. Here a non-object, or an
    # object with wrong fields, is final: the model answered with that JSON and nothing else.
    whole = _unfence(stripped)
    decoded, ok = _loads(whole)
    if ok:
        if not isinstance(decoded, dict):
            return _invalid(f"JSON is a {_json_type(decoded)}, not an object")
        return _validate(decoded)

    # Slow path: look for an object embedded in prose or a fence with text around it.
    first_error = ""
    saw_truncated = saw_undecodable = False
    tried, budget = 0, _SCAN_BUDGET
    pos = stripped.find("{")
    while pos != -1 and tried < _MAX_CANDIDATES and budget > 0:
        tried += 1
        end = _match_brace(stripped, pos, stop=min(len(stripped), pos + budget))
        budget -= (len(stripped) if end is None else end + 1) - pos
        if end is None:
            # Unclosed from here on; an inner '{' may still close (e.g. a truncated wrapper).
            saw_truncated = True
            pos = stripped.find("{", pos + 1)
            continue
        decoded, ok = _loads(stripped[pos : end + 1])
        if not ok:
            saw_undecodable = True
            pos = stripped.find("{", pos + 1)
            continue
        result = _validate(decoded)
        if result.valid:
            return result
        first_error = first_error or result.error
        # Skip the whole decoded object: its inner braces belong to it, not to a new answer.
        pos = stripped.find("{", end + 1)

    if first_error:
        return _invalid(first_error)
    if saw_undecodable:
        return _invalid("invalid JSON")
    if saw_truncated:
        return _invalid("truncated JSON object")
    return _invalid("no JSON object found")


def _invalid(reason: str) -> ParsedFeedback:
    return ParsedFeedback(valid=False, error=reason)


def _unfence(text: str) -> str:
    """The inside of a single code fence spanning the whole text, else the text unchanged."""
    match = _FENCE.match(text)
    return match.group(1).strip() if match else text


def _loads(text: str) -> tuple[object, bool]:
    """``(value, True)`` when ``text`` is one JSON value, else ``(None, False)``."""
    try:
        return json.loads(text), True
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; deep nesting recurses
        return None, False


def _json_type(value: object) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def _match_brace(text: str, start: int, stop: int | None = None) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``start``, or None if the text (or ``text[:stop]``)
    ends first.

    Braces inside JSON strings do not count, and ``\\"`` inside a string does not end it.
    """
    depth = 0
    in_string = escaped = False
    for i in range(start, len(text) if stop is None else stop):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def _validate(obj: object) -> ParsedFeedback:
    """Check the four fields and their types; extra keys are ignored."""
    if not isinstance(obj, dict):
        return _invalid(f"JSON is a {_json_type(obj)}, not an object")
    missing = [key for key in FEEDBACK_KEYS if key not in obj]
    if missing:
        return _invalid("missing key: " + ", ".join(missing))
    for key, expected in _KEY_TYPES.items():
        # type() rather than isinstance(): a JSON bool must not pass as a number or vice versa.
        if type(obj[key]) is not expected:
            wanted = "boolean" if expected is bool else "string"
            return _invalid(f"'{key}' must be a {wanted}, got {_json_type(obj[key])}")
    return ParsedFeedback(
        valid=True,
        unsafe=obj["unsafe"],
        overrefuse=obj["overrefuse"],
        feedback=obj["feedback"],
        reasoning=obj["reasoning"],
    )
