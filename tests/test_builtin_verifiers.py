"""Built-in verifiers (regex, think_answer, json_schema, python_tests) on correct, wrong and
malformed input, against hand-written expectations. python_tests runs real sandboxed processes.
"""

import time

import pytest

from rlstack.errors import DataError, PluginError
from rlstack.verifiers import BUILTIN_VERIFIERS, load_verifier
from rlstack.verifiers.format import think_answer
from rlstack.verifiers.json_schema import json_schema
from rlstack.verifiers.python_tests import extract_code, python_tests
from rlstack.verifiers.regex import regex_match


def score(result):
    return result[0] if isinstance(result, tuple) else result


@pytest.mark.parametrize(
    ("name", "function"),
    [
        ("regex", regex_match),
        ("think_answer", think_answer),
        ("json_schema", json_schema),
        ("python_tests", python_tests),
    ],
)
def test_builtins_load_by_short_name(name, function):
    assert BUILTIN_VERIFIERS[name] is function
    assert load_verifier(name) is function


# --- regex -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "options", "expected"),
    [
        ("The answer is 42.", {"pattern": r"\b42\b"}, 1.0),
        ("The answer is 421.", {"pattern": r"\b42\b"}, 0.0),
        ("  YES  ", {"pattern": "yes", "mode": "fullmatch", "flags": "i"}, 1.0),
        ("YES", {"pattern": "yes", "mode": "fullmatch"}, 0.0),
        ("yes, and more", {"pattern": "yes", "mode": "fullmatch"}, 0.0),
        ("yes, and more", {"pattern": "yes", "mode": "match"}, 1.0),
        ("and yes", {"pattern": "yes", "mode": "match"}, 0.0),
        ("a\nb", {"pattern": "a.b", "flags": ["DOTALL"]}, 1.0),
        ("a\nb", {"pattern": "a.b"}, 0.0),
        ("  x  ", {"pattern": r"\s+x\s+", "mode": "fullmatch", "strip": False}, 1.0),
        (None, {"pattern": "x"}, 0.0),
    ],
)
def test_regex_match(response, options, expected):
    assert regex_match("prompt", response, "ignored", **options, row_id=7) == expected


def test_regex_takes_the_pattern_from_the_reference_when_no_option():
    assert regex_match("", "order #A-123", r"#[A-Z]-\d{3}") == 1.0
    assert regex_match("", "order #123", r"#[A-Z]-\d{3}") == 0.0


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"pattern": "(unclosed"}, PluginError),
        ({"pattern": "x", "mode": "anywhere"}, PluginError),
        ({"pattern": "x", "flags": "q"}, PluginError),
        ({"pattern": "x", "flags": ["NOT_A_FLAG"]}, PluginError),
        ({}, DataError),  # the reference below is not a valid pattern
    ],
)
def test_regex_rejects_bad_options_with_one_clear_error(options, error):
    with pytest.raises(error, match="regex: "):
        regex_match("", "text", "[bad", **options)


# --- think_answer ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "expected", "detail"),
    [
        ("<think>2+2 is 4</think><answer>4</answer>", 1.0, {"answer": "4"}),
        ("\n<think>\nstep\n</think>\n\n<answer> 4 </answer>\n", 1.0, {"answer": "4"}),
        ("<answer>4</answer><think>late</think>", 0.0, "order"),
        ("<think>no answer</think>", 0.0, "<answer> occurs 0 times"),
        ("4", 0.0, "<think> occurs 0 times"),
        ("Sure! <think>x</think><answer>4</answer>", 0.0, "outside"),
        ("<think>x</think> so <answer>4</answer>", 0.0, "outside"),
        ("<think>x</think><answer>4</answer> done", 0.0, "outside"),
        ("<think>x</think><answer>4</answer><answer>5</answer>", 0.0, "occurs 2 times"),
        ("<think>a <answer>4</answer></think><answer>4</answer>", 0.0, "occurs 2 times"),
        ("<think> </think><answer>4</answer>", 0.0, "empty"),
        ("<think>x</think><answer></answer>", 0.0, "empty"),
        ("<think>x</think><answer>4", 0.0, "</answer> occurs 0 times"),
        (None, 0.0, "not text"),
    ],
)
def test_think_answer(response, expected, detail):
    value, details = think_answer("prompt", response, "ref", dataset="x")

    assert value == expected
    if isinstance(detail, dict):
        assert details == detail
    else:
        assert detail in details["reason"]


def test_think_answer_options():
    text = "Let me see. <reasoning>x</reasoning> Therefore <final>4</final>"

    assert think_answer("", text, "")[0] == 0.0
    assert think_answer("", text, "", think_tag="reasoning", answer_tag="final")[0] == 0.0
    assert think_answer(
        "", text, "", think_tag="reasoning", answer_tag="final", allow_outside=True
    ) == (1.0, {"answer": "4"})
    assert think_answer("", "<think></think><answer>4</answer>", "", nonempty=False)[0] == 1.0


@pytest.mark.parametrize(
    "tags", [{"think_tag": "a b"}, {"answer_tag": "<x>"}, {"answer_tag": "think"}]
)
def test_think_answer_rejects_bad_tag_names(tags):
    with pytest.raises(PluginError, match="think_answer: "):
        think_answer("", "<think>x</think><answer>4</answer>", "", **tags)


# --- json_schema -----------------------------------------------------------------------------

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("response", "expected", "error", "path"),
    [
        ('{"name": "Ada", "age": 36}', 1.0, None, None),
        (
            'Here it is:\n```json\n{"name": "Ada", "age": 36, "tags": ["x"]}\n```\nDone.',
            1.0,
            None,
            None,
        ),
        (
            '```json\n{"name": 1}\n```\nfixed:\n```json\n{"name": "Ada", "age": 1}\n```',
            1.0,
            None,
            None,
        ),
        ('{"name": "Ada", "age": -1}', 0.0, "less than the minimum", "/age"),
        (
            '{"name": "Ada", "age": 36, "tags": ["x", 2]}',
            0.0,
            "2 is not of type 'string'",
            "/tags/1",
        ),
        ('{"name": "Ada"}', 0.0, "'age' is a required property", "/"),
        ('{"name": "Ada", "age": 36, "extra": 1}', 0.0, "Additional properties", "/"),
        ('{"name": "Ada", "age": 36', 0.0, "not JSON", None),
        ("The person is Ada, 36.", 0.0, "not JSON", None),
        ("```json\n{'name': 'Ada'}\n```", 0.0, "not JSON", None),
        ("[" * 100_000, 0.0, "not JSON", None),
    ],
)
def test_json_schema(response, expected, error, path):
    value, details = json_schema("prompt", response, "", schema=PERSON, row=3)

    assert value == expected
    if error is None:
        assert details == {}
    else:
        assert error in details["error"]
        assert details.get("path") == path


def test_json_schema_reads_the_schema_from_text_column_or_reference():
    import json

    text = json.dumps(PERSON)
    good, bad = '{"name": "Ada", "age": 36}', '{"name": "Ada", "age": "36"}'

    assert json_schema("", good, text)[0] == 1.0  # the reference
    assert json_schema("", bad, text)[0] == 0.0
    assert json_schema("", good, "not used", schema=text)[0] == 1.0  # option or column as text
    assert json_schema("", good, "not used", **{"schema": PERSON, "source": "x"})[0] == 1.0


def test_json_schema_checks_formats_only_when_asked():
    schema = {"type": "string", "format": "ipv4"}

    assert json_schema("", '"not an address"', "", schema=schema)[0] == 1.0
    assert json_schema("", '"not an address"', "", schema=schema, check_formats=True)[0] == 0.0
    assert json_schema("", '"127.0.0.1"', "", schema=schema, check_formats=True)[0] == 1.0


@pytest.mark.parametrize(
    ("schema", "reference", "error"),
    [
        (None, "{not json", DataError),
        (None, '"a string"', DataError),
        (None, '{"type": "no-such-type"}', DataError),
        ("{not json", "", PluginError),
        ({"type": 5}, "", PluginError),
        ({"$ref": "https://schemas.invalid/person.json"}, "", PluginError),
    ],
)
def test_json_schema_rejects_bad_schemas_with_one_clear_error(schema, reference, error):
    with pytest.raises(error, match="json_schema: "):
        json_schema("", '{"name": "Ada"}', reference, schema=schema)


# --- python_tests ----------------------------------------------------------------------------

TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\nassert add(0, 0) == 0\n"


def test_extract_code_takes_the_last_python_block_or_the_whole_response():
    text = "First:\n```python\nx = 1\n```\nBetter:\n```py\nx = 2\n```\n```\nnot code\n```"

    assert extract_code(text) == "x = 2\n"
    assert extract_code("x = 3") == "x = 3"


def test_python_tests_correct_code_scores_one():
    response = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\nIt adds."

    value, details = python_tests("Write add.", response, TESTS, split="train")

    assert value == 1.0
    assert details["passed"] and details["asserts"] == 3 and details["failed"] == []


def test_python_tests_wrong_code_scores_zero_and_names_the_failing_test():
    value, details = python_tests("", "def add(a, b):\n    return a * b\n", TESTS)

    assert value == 0.0
    assert details["failed_asserts"] == 2
    assert [f["source"] for f in details["failed"]] == [
        "assert add(1, 2) == 3",
        "assert add(-1, 1) == 0",
    ]


def test_python_tests_partial_credit_is_the_fraction_of_passing_asserts():
    value, _ = python_tests("", "def add(a, b):\n    return a * b\n", TESTS, partial_credit=True)

    assert value == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("response", "expected_error"),
    [
        ("def add(a, b) return a + b", "SyntaxError"),
        ("I think you should add the numbers.", "SyntaxError"),
        ("raise RuntimeError('no')", "RuntimeError: no"),
    ],
)
def test_python_tests_malformed_code_scores_zero_even_with_partial_credit(response, expected_error):
    value, details = python_tests("", response, TESTS, partial_credit=True)

    assert value == 0.0
    assert expected_error in details["error"]


def test_python_tests_empty_response_fails_every_assert():
    value, details = python_tests("", "", TESTS, partial_credit=True)

    assert value == 0.0
    assert details["failed_asserts"] == 3
    assert all("NameError" in f["error"] for f in details["failed"])


def test_python_tests_reads_tests_from_a_column_and_runs_a_check_function():
    tests = "def check(f):\n    assert f(2, 2) == 4\n\ncheck(add)\n"
    good, bad = "def add(a, b):\n    return a + b", "def add(a, b):\n    return 5"

    assert python_tests("", good, "unused reference", tests=tests)[0] == 1.0
    value, details = python_tests("", bad, "unused reference", tests=tests, partial_credit=True)
    assert value == 0.0
    assert "AssertionError" in details["error"]


@pytest.mark.parametrize(
    "hack",
    [
        "import os\nos._exit(0)",
        "import sys\nsys.exit(0)",
        "def add(a, b):\n    import sys\n    sys.exit(0)",
        "print('all tests passed')\nimport os\nos._exit(0)",
        "import builtins\nbuiltins.exec = lambda *args, **kwargs: None",
        "import ast\nast.parse = lambda *args, **kwargs: ast.Module([], [])",
        'import json\njson.dumps = lambda *a, **k: \'{"phase": "done", "error": null}\'',
        "import json.encoder\njson.encoder.c_make_encoder = None",
        "import traceback\ntraceback.format_exception_only = lambda *args: 1 / 0",
        "import builtins\nbuiltins.BaseException = builtins.MemoryError = KeyError",
    ],
)
def test_python_tests_early_exit_or_patched_harness_does_not_pass(hack):
    assert python_tests("", hack, TESTS)[0] == 0.0


def test_python_tests_endless_code_times_out_quickly():
    start = time.monotonic()

    value, details = python_tests("", "while True:\n    pass", TESTS, timeout_s=1)

    assert value == 0.0 and details["timed_out"]
    assert time.monotonic() - start < 4


@pytest.mark.parametrize(
    ("tests", "error"),
    [("", DataError), (None, DataError), ("assert (", DataError)],
)
def test_python_tests_rejects_missing_or_broken_tests(tests, error):
    with pytest.raises(error, match="python_tests: "):
        python_tests("", "x = 1", tests)


def test_python_tests_rejects_bad_limits():
    with pytest.raises(PluginError, match="timeout_s"):
        python_tests("", "x = 1", TESTS, timeout_s=0)
