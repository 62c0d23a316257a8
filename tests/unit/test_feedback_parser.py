"""parse_feedback accepts well-formed verdicts in any wrapping and rejects everything else."""

from __future__ import annotations

import json

import pytest

from waltzlit.agents.feedback_format import FEEDBACK_KEYS, parse_feedback, render_feedback_json

GOOD = '{"reasoning": "Benign question, refused.", "unsafe": false, "overrefuse": true, "feedback": "Answer it."}'


def test_bare_object():
    parsed = parse_feedback(GOOD)
    assert parsed.valid and parsed.error == ""
    assert parsed.unsafe is False and parsed.overrefuse is True
    assert parsed.reasoning == "Benign question, refused." and parsed.feedback == "Answer it."
    assert parsed.triggers_revision and not parsed.satisfactory


def test_render_round_trip_and_key_order():
    text = render_feedback_json("fine", False, False, "")
    assert list(json.loads(text)) == list(FEEDBACK_KEYS)
    assert " " not in text.replace("fine", "")  # compact separators
    parsed = parse_feedback(text)
    assert parsed.valid and parsed.satisfactory and parsed.feedback == ""


@pytest.mark.parametrize(
    "wrapped",
    [
        f"```json\n{GOOD}\n```",
        f"```\n{GOOD}\n```",
        f"  \n{GOOD}\n\n",
        f"Here is my verdict:\n```json\n{GOOD}\n```\nHope this helps.",
        f"Verdict: {GOOD} -- end",
    ],
)
def test_wrappings(wrapped):
    parsed = parse_feedback(wrapped)
    assert parsed.valid, parsed.error
    assert parsed.overrefuse is True


def test_braces_and_escaped_quotes_inside_strings():
    obj = {
        "reasoning": 'The user wrote "{ not json }" and a lone } brace; also \\ and \\"',
        "unsafe": True,
        "overrefuse": False,
        "feedback": "Use a dict like {'a': 1} in the example.",
    }
    text = "Sure: " + json.dumps(obj) + " trailing {"
    parsed = parse_feedback(text)
    assert parsed.valid, parsed.error
    assert parsed.reasoning == obj["reasoning"] and parsed.feedback == obj["feedback"]


def test_nested_object_value_is_allowed_as_extra_key():
    text = '{"reasoning": "r", "unsafe": false, "overrefuse": false, "feedback": "", "meta": {"x": [1, {"y": 2}]}}'
    assert parse_feedback(text).valid


@pytest.mark.parametrize("value", ['"true"', "1", "null", '"false"'])
def test_bool_must_be_json_boolean(value):
    text = '{"reasoning": "r", "unsafe": %s, "overrefuse": false, "feedback": ""}' % value
    parsed = parse_feedback(text)
    assert not parsed.valid
    assert "unsafe" in parsed.error and parsed.unsafe is None


def test_strings_must_be_strings():
    text = '{"reasoning": ["r"], "unsafe": false, "overrefuse": false, "feedback": ""}'
    assert "reasoning" in parse_feedback(text).error
    text = '{"reasoning": "r", "unsafe": false, "overrefuse": false, "feedback": null}'
    assert "feedback" in parse_feedback(text).error


@pytest.mark.parametrize("key", FEEDBACK_KEYS)
def test_missing_key(key):
    obj = json.loads(GOOD)
    del obj[key]
    parsed = parse_feedback(json.dumps(obj))
    assert not parsed.valid and "missing" in parsed.error and key in parsed.error


def test_list_instead_of_object():
    parsed = parse_feedback(f"[{GOOD}]")
    assert not parsed.valid and "list" in parsed.error
    parsed = parse_feedback('["reasoning", "unsafe", "overrefuse", "feedback"]')
    assert not parsed.valid and "list" in parsed.error


@pytest.mark.parametrize("scalar", ['"just a string"', "42", "true", "null"])
def test_non_object_scalars(scalar):
    parsed = parse_feedback(scalar)
    assert not parsed.valid and "not an object" in parsed.error


@pytest.mark.parametrize("cut", [10, 40, len(GOOD) - 1])
def test_truncated(cut):
    parsed = parse_feedback(GOOD[:cut])
    assert not parsed.valid and "truncated" in parsed.error


@pytest.mark.parametrize("text", ["", "   \n\t", None, 42])
def test_empty_or_not_text(text):
    parsed = parse_feedback(text)
    assert not parsed.valid and parsed.error


def test_prose_without_json():
    parsed = parse_feedback("The response looks fine to me, no issues.")
    assert not parsed.valid and parsed.error == "no JSON object found"


def test_balanced_but_not_json():
    parsed = parse_feedback("verdict {unsafe: false, overrefuse: maybe}")
    assert not parsed.valid and parsed.error == "invalid JSON"


def test_single_quoted_python_dict_is_not_json():
    text = "{'reasoning': 'r', 'unsafe': False, 'overrefuse': False, 'feedback': ''}"
    assert not parse_feedback(text).valid


def test_two_objects_first_valid_wins():
    first = render_feedback_json("first", True, False, "Decline.")
    second = render_feedback_json("second", False, True, "Answer.")
    parsed = parse_feedback(f"{first}\n{second}")
    assert parsed.valid and parsed.reasoning == "first"
    # An object without the fields is skipped in favour of a later valid one.
    parsed = parse_feedback('{"note": "draft"} then ' + second)
    assert parsed.valid and parsed.reasoning == "second"
    # When no object is valid, the first decoded object's problem is reported.
    parsed = parse_feedback('{"note": "draft"} and {"unsafe": "yes"}')
    assert not parsed.valid and parsed.error.startswith("missing key")


def test_unicode():
    text = render_feedback_json("Réponse refusée — 拒绝 ✓", False, True, "Répondez: «aperçu» 😊")
    assert "😊" in text  # ensure_ascii=False keeps characters readable
    parsed = parse_feedback("Voilà : " + text)
    assert parsed.valid and parsed.feedback == "Répondez: «aperçu» 😊"
    escaped = json.dumps(json.loads(text))  # \\u escapes decode too
    assert parse_feedback(escaped).reasoning == "Réponse refusée — 拒绝 ✓"


def test_hostile_inputs_do_not_raise():
    for text in ["{" * 5000, "[" * 100000, "}" * 100, '{"a": "\\', '{"a": "\\"}', "```json\n```", "{}"]:
        parsed = parse_feedback(text)
        assert not parsed.valid and parsed.error
