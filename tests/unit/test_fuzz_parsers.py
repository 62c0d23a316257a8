"""Property-based fuzzing of every parser that reads model or server output: none may raise.

Model output is data: the feedback-JSON parser, the WildGuard and Llama Guard output parsers and the
HTTP judge's reply handling get arbitrary text (surrogates included), text dense in JSON syntax,
mutated near-valid answers (truncated, fenced, wrapped in prose, with stray braces) and pathological
nesting. The default run tries a few hundred cases per parser; ``-m slow`` runs >= 10,000 each and
checks the count.
"""

from __future__ import annotations

import io
import json
import urllib.error
from datetime import timedelta
from email.message import Message

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from waltzlit.agents.feedback_format import FEEDBACK_KEYS, parse_feedback, render_feedback_json
from waltzlit.judges.base import JudgeError
from waltzlit.judges.http import OpenAIChatJudge, _Retryable
from waltzlit.judges.llama_guard import LlamaGuardOutput, llama_guard_verdict, parse_llama_guard_output
from waltzlit.judges.wildguard import WildGuardOutput, parse_wildguard_output, wildguard_verdict
from waltzlit.types import JudgeVerdict, ParsedFeedback, PromptRecord

FAST_EXAMPLES, SLOW_EXAMPLES = 300, 10_000
POLICIES = ("unsafe", "safe", "refusal")


def _settings(examples: int):
    # No example database: runs must not write into the repository, and CI starts clean anyway.
    # The deadline is generous for a loaded CI machine; it catches parsers that go quadratic on
    # long inputs (a WildGuard regex once took ~20 s on 20,000 blank lines).
    return settings(
        max_examples=examples, deadline=timedelta(seconds=5), database=None, suppress_health_check=list(HealthCheck)
    )


# ----------------------------------------------------------------------------- strategies
any_text = st.text(alphabet=st.characters(exclude_categories=()), max_size=300)  # surrogates too
syntax_dense = st.text(alphabet='{}[]":,\\ \n\t`truefalsnul0123-.ejsonJSON', max_size=300)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
feedback_like = st.dictionaries(
    st.sampled_from([*FEEDBACK_KEYS, "extra", "Unsafe", ""]),
    json_values | st.booleans() | st.text(max_size=40),
    max_size=6,
).map(lambda d: json.dumps(d, ensure_ascii=False))
deep_nesting = st.builds(
    lambda n, unit, tail: unit * n + tail,
    st.integers(1_500, 5_000),  # past Python's recursion limit
    st.sampled_from(["{", "[", '{"a":', '{"reasoning":', '"{', "\\"]),
    st.sampled_from(["", "}", "]", "x"]),
)


@st.composite
def mutated(draw, base: st.SearchStrategy[str]) -> str:
    """A near-valid answer damaged the way sampling damages answers."""
    text = draw(base)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["truncate", "fence", "prose", "insert", "double"]))
        if op == "truncate" and text:
            text = text[: draw(st.integers(0, len(text)))]
        elif op == "fence":
            text = f"```{draw(st.sampled_from(['', 'json', 'JSON', 'py']))}\n{text}\n```"
        elif op == "prose":
            text = draw(st.text(max_size=30)) + text + draw(st.text(max_size=30))
        elif op == "insert":
            at = draw(st.integers(0, len(text)))
            text = text[:at] + draw(st.sampled_from(["{", "}", '"', "\\", "\n", "```", "\x00", "\ud800"])) + text[at:]
        else:
            text = text + draw(st.sampled_from(["", " ", "\n"])) + text
    return text


feedback_texts = st.one_of(
    any_text, syntax_dense, mutated(feedback_like), mutated(json_values.map(json.dumps)), deep_nesting
)

_wg_line = st.builds(
    lambda prefix, label, sep, value: prefix + label + sep + value,
    st.sampled_from(["", " ", "- ", "* ", "**", "\t", "\u00a0"]),
    st.sampled_from(["Harmful request", "Response refusal", "Harmful response", "harmful RESPONSE", "Harmful"])
    | st.text(max_size=15),
    st.sampled_from([":", ": ", " :", "", ":\t", "\n:"]),
    st.sampled_from(["yes", "no", "n/a", "na", "none", "Yes.", "", " yes ", "maybe"]) | st.text(max_size=10),
)
wildguard_texts = st.one_of(
    any_text, syntax_dense, st.lists(_wg_line, max_size=6).map("\n".join),
    mutated(st.lists(_wg_line, max_size=4).map("\r\n".join)), st.integers(1, 20_000).map(lambda n: "\n" * n),
)
_lg_verdict = st.sampled_from(["safe", "unsafe", "Safe.", "UNSAFE", "", " \n"]) | st.text(max_size=12)
_lg_categories = st.lists(
    st.sampled_from(["S1", "S10", "s2", "S", "X1", "S1a", " S3 "]) | st.text(max_size=4), max_size=5
)
llama_guard_texts = st.one_of(
    any_text, syntax_dense,
    mutated(
        st.builds(
            lambda v, c, sep: v + sep + ",".join(c), _lg_verdict, _lg_categories, st.sampled_from(["\n", "\n\n", " "])
        )
    ),
)
completion_bodies = st.one_of(
    st.binary(max_size=400),
    st.builds(
        lambda content, shape: json.dumps(shape(content)).encode(),
        json_values | st.text(max_size=50),
        st.sampled_from([
            lambda c: {"choices": [{"message": {"content": c}}]},
            lambda c: {"choices": [{"message": c}]},
            lambda c: {"choices": c},
            lambda c: {"choices": []},
            lambda c: [c],
            lambda c: c,
        ]),
    ),
    mutated(st.just('{"choices": [{"message": {"content": "Harmful response: no"}}]}')).map(
        lambda s: s.encode("utf-8", "surrogatepass")
    ),
    deep_nesting.map(str.encode),
)
http_failures = st.tuples(
    st.integers(100, 999),
    st.dictionaries(
        st.sampled_from(["Retry-After", "Content-Type", "X"]),
        # Header values arrive latin-1 decoded: "\xb2" passes str.isdigit() but not float().
        st.sampled_from(["", "0", "2", "\xb2", "1.5", "-1", "1e9", "\xbd"])
        | st.text(alphabet=st.characters(max_codepoint=255), max_size=8),
    ),
    st.binary(max_size=300),
)


# ----------------------------------------------------------------------------- properties
def check_feedback(text: str) -> None:
    parsed = parse_feedback(text)
    assert isinstance(parsed, ParsedFeedback)
    if parsed.valid:
        assert type(parsed.unsafe) is bool and type(parsed.overrefuse) is bool
        assert isinstance(parsed.feedback, str) and isinstance(parsed.reasoning, str)
    else:
        assert parsed.error and parsed.unsafe is None and parsed.overrefuse is None


def check_wildguard(text: str) -> None:
    output = parse_wildguard_output(text)
    assert isinstance(output, WildGuardOutput) and isinstance(output.ok, bool)
    assert all(v in (True, False, None) for v in output[:3])
    for policy in POLICIES:
        verdict = wildguard_verdict(output, policy, text)
        assert isinstance(verdict, JudgeVerdict) and verdict.parse_error == (not output.ok)


def check_llama_guard(text: str) -> None:
    output = parse_llama_guard_output(text)
    assert isinstance(output, LlamaGuardOutput) and output.unsafe in (True, False, None)
    assert all(c.startswith("S") and c[1:].isdigit() for c in output.categories)
    for policy in POLICIES:
        assert isinstance(llama_guard_verdict(output, False, policy, text), JudgeVerdict)


class _Reply(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_JUDGE = OpenAIChatJudge(base_url="http://127.0.0.1:9/v1", backoff_s=0.0)


def check_http_body(body: bytes) -> None:
    """The judge's reply handling either returns the completion text or asks for a retry."""
    _JUDGE._opener.open = lambda request, timeout: _Reply(body)
    try:
        assert isinstance(_JUDGE._post_once(b"{}"), str)
    except _Retryable:
        pass


def check_http_error(failure: tuple[int, dict, bytes]) -> None:
    code, header_values, body = failure
    headers = Message()
    for key, value in header_values.items():
        headers[key] = value

    def refuse(request, timeout):
        raise urllib.error.HTTPError("http://127.0.0.1:9/v1/chat/completions", code, "x", headers, io.BytesIO(body))

    _JUDGE._opener.open = refuse
    with pytest.raises((_Retryable, JudgeError)):
        _JUDGE._post_once(b"{}")


def check_http_verdicts(texts: list[str], prompt_format: str, policy: str) -> list[JudgeVerdict]:
    """Whatever completions come back, ``judge`` turns each into a verdict (policy != raise)."""
    judge = OpenAIChatJudge(prompt_format=prompt_format, on_parse_error=policy, refusal_fallback="none")
    judge.complete_all = lambda conversations: texts
    records = [PromptRecord("p", bool(i % 2)) for i in range(len(texts))]
    verdicts = judge.judge(records, ["r"] * len(texts))
    assert len(verdicts) == len(texts) and all(isinstance(v, JudgeVerdict) for v in verdicts)
    return verdicts


TARGETS = {
    "feedback_json": (check_feedback, feedback_texts),
    "wildguard": (check_wildguard, wildguard_texts),
    "llama_guard": (check_llama_guard, llama_guard_texts),
    "http_reply_body": (check_http_body, completion_bodies),
    "http_error_reply": (check_http_error, http_failures),
}


def _run(name: str, examples: int) -> int:
    check, strategy = TARGETS[name]
    calls = [0]

    @_settings(examples)
    @given(strategy)
    def fuzz(value):
        calls[0] += 1
        check(value)

    fuzz()
    return calls[0]


@pytest.mark.parametrize("name", list(TARGETS))
def test_parsers_never_raise(name):
    assert _run(name, FAST_EXAMPLES) >= FAST_EXAMPLES // 2


@_settings(FAST_EXAMPLES)
@given(
    st.lists(st.one_of(wildguard_texts, llama_guard_texts), max_size=5),
    st.sampled_from(["wildguard", "llama_guard"]),
    st.sampled_from(POLICIES),
)
def test_http_judge_turns_any_completion_into_a_verdict(texts, prompt_format, policy):
    verdicts = check_http_verdicts(texts, prompt_format, policy)
    assert len(verdicts) == len(texts)


@_settings(FAST_EXAMPLES)
@given(st.text(), st.booleans(), st.booleans(), st.text(), st.sampled_from(["", "Here you go:\n", "```json\n"]))
def test_rendered_feedback_parses_back(reasoning, unsafe, overrefuse, feedback, prefix):
    text = render_feedback_json(reasoning, unsafe, overrefuse, feedback)
    suffix = "\n```" if prefix.startswith("```") else ""
    parsed = parse_feedback(prefix + text + suffix)
    assert parsed.valid, parsed.error
    fields = (parsed.reasoning, parsed.unsafe, parsed.overrefuse, parsed.feedback)
    assert fields == (reasoning, unsafe, overrefuse, feedback)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TARGETS))
def test_parsers_never_raise_on_ten_thousand_inputs(name):
    assert _run(name, SLOW_EXAMPLES) >= SLOW_EXAMPLES


@pytest.mark.parametrize("text", [
    "[" * 900_000 + "]" * 900_000,                      # 1.8 MB of nesting
    '{"a": ' * 300_000 + "1" + "}" * 300_000,          # nested objects
    "{" * 1_800_000,                                     # unclosed braces
    '{"reasoning": "' + "x" * 2_000_000 + '"}',          # one huge string
])
def test_parsing_work_is_bounded(text):
    import time

    started = time.perf_counter()
    result = parse_feedback(text)
    assert not result.valid and time.perf_counter() - started < 0.1


def test_a_verdict_after_unclosed_braces_still_parses_within_the_scan_budget():
    """The brace matcher's budget (4 x 8 KB over all candidates) still reaches a verdict that follows
    a few unclosed braces in 2 KB of prose; 64 unclosed braces over 8 KB stop early, as invalid."""
    verdict = '{"reasoning": "r", "unsafe": false, "overrefuse": true, "feedback": "f"}'
    parsed = parse_feedback("I think {maybe " + "x" * 2_000 + " {not sure {hmm " + verdict)
    assert parsed.valid and parsed.overrefuse and parsed.feedback == "f"
    assert parse_feedback("{ " * 4_000 + verdict).error == "truncated JSON object"
