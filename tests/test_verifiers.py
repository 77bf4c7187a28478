"""Verifiers: numeric answer extraction, GSM8K references, exact match, loading by spec."""

import json
import sys
import threading
import time
from pathlib import Path

import pytest

from rlstack.errors import PluginError
from rlstack.verifiers import (
    BUILTIN_VERIFIERS,
    exact_match,
    extract_number,
    load_verifier,
    numbers_equal,
    numeric_match,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# --- extract_number --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 18.", "18"),
        ("She pays $1,000.50 in total", "1000.50"),
        ("It grows by 50%.", "50"),
        ("Each gets 3/4.", "3/4"),
        ("x = -5", "-5"),
        ("Ans: \u22127", "-7"),  # unicode minus
        ("from 3-5 hours", "5"),  # a hyphen between numbers is not a sign
        ("half is .5", ".5"),
        ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\n#### 1,234", "1234"),
        ("#### 72 and then the model rambles 5", "72"),  # #### wins over the last number
        ("6 * 3 = 18 \\boxed{18} so 20", "18"),  # \boxed wins over the last number
        ("#### 7 \\boxed{8}", "7"),  # #### wins over \boxed
        ("\\boxed{\\frac{3}{4}}", "3/4"),
        ("\\boxed{-\\dfrac{1}{2}}", "-1/2"),
        ("\\boxed{1{,}000}", "1000"),
        ("\\boxed{18 \\text{ dollars}}", "18"),
        ("\\boxed{\\$18}", "18"),
        ("\\boxed{2\\frac{1}{2}}", "5/2"),  # math-verify: mixed number
        ("\\boxed{x = 5}", "5"),  # math-verify: right-hand side of an equation
        ("\\boxed{2^{10}}", "1024"),  # math-verify: evaluated
        ("\\frac{3}{4}", "3/4"),  # a LaTeX fraction outside a box
        ("values 1,2,3", "3"),  # not a thousands separator
        ("no number here", None),
        ("", None),
        ("7 \\boxed{}", "7"),  # an empty box is ignored
        ("\\boxed{18", "18"),  # a box cut off mid-answer falls back to the last number
        ("2 is \\boxed{\\sqrt{-1}}", None),  # a non-empty box without a real number is final
    ],
)
def test_extract_number(text, expected):
    assert extract_number(text) == expected


def test_extract_number_of_irrational_boxed_answer_is_a_decimal():
    assert numbers_equal(extract_number("\\boxed{2\\sqrt{2}}"), "2.8284271247461903")


@pytest.mark.parametrize(
    "text",
    [
        None,
        12,
        "1" * 20000,  # more digits than int() accepts
        "\\boxed{" + "{" * 5000,
        "\\boxed{" + "(" * 90 + "1" + ")" * 90 + "}",  # math-verify runs out of time
        "\\boxed{10^{10^{10}}}",  # must not be evaluated exactly
        "\\boxed{\\frac{1}{0}}",
        "#### " + "9," * 10000,
        "\x00\ufffd\\\\boxed{}}{{",
    ],
)
def test_odd_input_neither_raises_nor_hangs(text):
    start = time.monotonic()

    score = numeric_match("", text, "7")

    assert score == 0.0
    assert time.monotonic() - start < 10


def test_boxed_latex_outside_main_thread_falls_back_to_last_plain_number_in_box():
    # math-verify's time limit needs the main thread; elsewhere a boxed expression that is not a
    # plain number or fraction reads as the last plain number inside the box
    results = {}

    def work():
        results["sqrt"] = extract_number("\\boxed{\\sqrt{16}}")
        results["frac"] = numeric_match("", "\\boxed{\\frac{3}{4}}", "0.75")

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=30)

    assert extract_number("\\boxed{\\sqrt{16}}") == "4"
    assert results == {"sqrt": "16", "frac": 1.0}


# --- numbers_equal and numeric_match --------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ("1,000", "1000", True),
        ("0.5", "1/2", True),
        ("$18.00", "18", True),
        ("-3", "-3.0", True),
        ("3.000001", "3.0000005", True),  # relative difference 1.7e-7 < 1e-6
        ("1/3", "0.3333333", True),  # relative difference 1e-7
        ("18", "18.000000000000004", True),
        ("3", "3.01", False),
        ("1450000", "1450001", False),  # whole numbers compare exactly
        ("-3", "3", False),
        ("0", "0.0", True),
        ("abc", "1", False),
        ("1/0", "1", False),
        (None, "1", False),
    ],
)
def test_numbers_equal(a, b, equal):
    assert numbers_equal(a, b) is equal


def test_numeric_match_scores_boxed_response_against_plain_reference():
    assert numeric_match("q", "So the total is \\boxed{1,000}.", "1000") == 1.0
    assert numeric_match("q", "So the total is \\boxed{999}.", "1000") == 0.0
    assert numeric_match("q", "I cannot tell.", "1000") == 0.0


def test_numeric_match_reads_reference_from_full_gsm8k_solution():
    reference = "She has 4 * 2 = <<4*2=8>>8 apples.\n#### 8"

    assert numeric_match("q", "The answer is 8 apples.", reference) == 1.0
    assert numeric_match("q", "The answer is 4.", reference) == 0.0


def test_every_gsm8k_reference_matches_itself_and_not_itself_plus_one():
    path = DATA / "gsm8k" / "test.jsonl"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    references = [row["answer"].split("#### ")[-1].strip() for row in rows]
    assert len(references) == 1319

    for reference in references:
        plus_one = int(reference.replace(",", "")) + 1
        assert numeric_match("", reference, reference) == 1.0, reference
        assert numeric_match("", f"The answer is {reference}.", reference) == 1.0, reference
        assert numeric_match("", f"#### {reference}", reference) == 1.0, reference
        assert numeric_match("", str(plus_one), reference) == 0.0, reference
        assert numeric_match("", f"\\boxed{{{plus_one:,}}}", reference) == 0.0, reference


# --- exact_match -----------------------------------------------------------------------------


def test_exact_match_ignores_surrounding_whitespace_only():
    assert exact_match("q", "  Paris\n", "Paris") == 1.0
    assert exact_match("q", "paris", "Paris") == 0.0
    assert exact_match("q", "Par is", "Paris") == 0.0
    assert exact_match("q", None, "Paris") == 0.0


# --- load_verifier ---------------------------------------------------------------------------


def test_builtin_names_resolve_to_builtin_verifiers():
    assert load_verifier("numeric") is numeric_match
    assert load_verifier("gsm8k") is numeric_match
    assert load_verifier("exact_match") is exact_match
    assert set(BUILTIN_VERIFIERS) >= {"numeric", "gsm8k", "exact_match"}


def test_module_spec_loads_function_from_importable_module():
    assert load_verifier("rlstack.verifiers.numeric:numeric_match") is numeric_match


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_file_spec_loads_function_from_file_outside_package(tmp_path):
    # the file imports a sibling module at its top level: allowed while it is being imported
    write(tmp_path / "length_helper.py", "def length(text):\n    return len(text)\n")
    source = write(
        tmp_path / "my-verifier.py",
        "from length_helper import length\n\n"
        "def score(prompt, response, reference, **extras):\n"
        "    return 1.0 if length(response) == int(reference) else 0.0\n",
    )
    path_before = list(sys.path)

    verifier = load_verifier(f"{source}:score")

    assert verifier("p", "abc", "3") == 1.0
    assert verifier("p", "abcd", "3") == 0.0
    assert sys.path == path_before  # the file's folder was on sys.path only during the import


def test_relative_file_spec_resolves_against_current_directory(tmp_path, monkeypatch):
    write(tmp_path / "plugins" / "reward.py", "def score(*args, **kwargs):\n    return 0.5\n")
    monkeypatch.chdir(tmp_path)

    assert load_verifier("plugins/reward.py:score")("p", "r", "ref") == 0.5


def test_files_with_the_same_name_in_different_folders_load_separately(tmp_path):
    first = write(tmp_path / "a" / "reward.py", "def score(*args, **kwargs):\n    return 1.0\n")
    second = write(tmp_path / "b" / "reward.py", "def score(*args, **kwargs):\n    return 2.0\n")

    assert load_verifier(f"{first}:score")() == 1.0
    assert load_verifier(f"{second}:score")() == 2.0
    assert load_verifier(f"{first}:score")() == 1.0


def assert_one_line_plugin_error(spec: str, *fragments: str) -> None:
    with pytest.raises(PluginError) as caught:
        load_verifier(spec)

    message = str(caught.value)
    assert message.startswith(f"verifier {spec!r}: "), message
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_spec_without_colon_that_is_no_builtin_is_rejected():
    assert_one_line_plugin_error("numerc", "expected 'package.module:function'", "numeric")


def test_spec_with_empty_function_is_rejected():
    assert_one_line_plugin_error("rlstack.verifiers.numeric:", "expected")


def test_missing_file_is_reported(tmp_path):
    assert_one_line_plugin_error(f"{tmp_path / 'absent.py'}:score", "file not found")


def test_syntax_error_in_file_is_reported_with_its_line(tmp_path):
    source = write(tmp_path / "broken.py", "import math\n\ndef score(:\n    return 1.0\n")

    assert_one_line_plugin_error(
        f"{source}:score", f"cannot import {source} (SyntaxError: ", "at line 3)"
    )


def test_exception_raised_while_importing_file_is_reported_on_one_line(tmp_path):
    source = write(tmp_path / "raises.py", "raise RuntimeError('first line\\nsecond line')\n")

    assert_one_line_plugin_error(
        f"{source}:score", "cannot import", "RuntimeError: first line second line"
    )
    assert not any("raises" in name for name in sys.modules if name.startswith("_rlstack"))


def test_missing_import_inside_file_is_reported(tmp_path):
    source = write(tmp_path / "needs.py", "import no_such_package_for_rlstack_tests\n")

    assert_one_line_plugin_error(f"{source}:score", "ModuleNotFoundError", "no_such_package")


def test_missing_module_is_reported():
    assert_one_line_plugin_error(
        "no_such_package_for_rlstack_tests.mod:score", "cannot import module", "ModuleNotFound"
    )


def test_missing_attribute_is_reported(tmp_path):
    source = write(tmp_path / "empty.py", "VALUE = 3\n")

    assert_one_line_plugin_error(f"{source}:score", "has no attribute 'score'")


def test_attribute_that_is_not_callable_is_reported(tmp_path):
    source = write(tmp_path / "constant.py", "VALUE = 3\n")

    assert_one_line_plugin_error(f"{source}:VALUE", "'VALUE'", "is not callable (it is int)")
