"""`rlstack verify` through the real command line: text report, --json, --list, bad data.

The scoring cases start their own local Ray (on 127.0.0.1) in the subprocess, as a user's
command would.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli_errors import assert_one_clear_error
from test_verifier_api import make_distribution

REPO = Path(__file__).resolve().parents[1]

PLUGIN = '''
import time

def check(prompt, response, reference, strip=True, **extras):
    """Exact match with a reason; hangs on 'hang', raises on 'raise'."""
    if response == "hang":
        time.sleep(3600)
    if response == "raise":
        raise RuntimeError("cannot parse")
    ok = (response.strip() if strip else response) == reference
    return (1.0 if ok else 0.0), {"topic": extras.get("topic"), "ok": ok}
'''

ROWS = [
    {"prompt": "1+1", "response": "2", "reference": "2", "topic": "add"},
    {"prompt": "2+2", "response": "5", "reference": "4", "topic": "add"},
    {"prompt": "3*3", "response": "9", "reference": 9, "topic": "mul"},
    {"prompt": "3+4", "response": "hang", "reference": "7"},
    {"prompt": "9-1", "response": "raise", "reference": "8"},
]


def verify(*args, cwd, env=None):
    env = {**os.environ, **(env or {})}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "rlstack", "verify", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def work(tmp_path):
    (tmp_path / "check.py").write_text(PLUGIN)
    write_jsonl(tmp_path / "data.jsonl", ROWS)
    return tmp_path


def test_text_report_gives_pass_rate_mean_failures_and_examples(work):
    result = verify(
        "check.py:check", "data.jsonl", "--timeout", "1", "--failure-score", "-1", cwd=work
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "pass rate (score >= 1): 40.0% (2 of 5)" in out
    assert "mean score: 0.0000" in out  # (1 + 0 + 1 - 1 - 1) / 5
    assert "failures (scored -1): raised 1, timeout 1" in out
    assert "[4] score -1 [raised: RuntimeError: cannot parse]" in out
    assert "[3] score -1 [timeout:" in out


def test_json_prints_a_row_object_per_row_and_a_summary_last(work):
    result = verify(
        "check.py:check", "data.jsonl", "--json", "--timeout", "1", "--workers", "1", cwd=work
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    rows, summary = lines[:-1], lines[-1]["summary"]
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["score"] for r in rows] == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert [r["failure"] for r in rows] == [None, None, None, "timeout", "raised"]
    assert rows[0]["details"] == {"topic": "add", "ok": True}
    assert rows[2]["details"] == {"topic": "mul", "ok": True}  # reference 9 reaches it as "9"
    assert "details" not in rows[3] and "cannot parse" in rows[4]["message"]
    assert summary["rows"] == 5 and summary["passed"] == 2
    assert summary["pass_rate"] == 0.4 and summary["mean_score"] == 0.4
    assert summary["failures"] == {"timeout": 1, "raised": 1}


def test_workers_0_scores_in_process_without_ray_and_agrees_with_the_pool(work):
    rows = [r for r in ROWS if r["response"] != "hang"]  # a hang would stall the process
    write_jsonl(work / "some.jsonl", rows)
    args = ("check.py:check", "some.jsonl", "--json", "--timeout", "1")
    local, pooled = (verify(*args, "--workers", n, cwd=work) for n in ("0", "1"))
    assert local.returncode == 0 and pooled.returncode == 0, local.stderr[-3000:]
    assert "Started a local Ray" not in local.stderr
    assert "Started a local Ray" in pooled.stderr
    assert local.stdout.splitlines()[:-1] == pooled.stdout.splitlines()[:-1]  # every row
    text = verify("check.py:check", "some.jsonl", "--workers", "0", cwd=work)
    assert "(in this process, 10s per call)" in text.stdout


def test_bound_option_reaches_the_verifier(work):
    rows = [{"prompt": "p", "response": " 42 ", "reference": "42"}]  # 1.0 when stripped
    write_jsonl(work / "one.jsonl", rows)
    result = verify("check.py:check", "one.jsonl", "--json", "--arg", "strip=false", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[0])["score"] == 0.0
    bad = verify("check.py:check", "one.jsonl", "--arg", "strip", cwd=work)
    assert_one_clear_error(bad, "--arg 'strip': expected key=value")


def test_an_option_given_twice_is_refused_before_ray_starts(work):
    args = ("--arg", "strip=false", "--arg", " strip=true")
    result = verify("check.py:check", "data.jsonl", *args, cwd=work)
    assert_one_clear_error(result, "--arg strip is given twice", "'false'", "'true'")
    assert "Started a local Ray" not in result.stderr


def test_list_names_built_ins_and_installed_entry_points(tmp_path):
    root = make_distribution(tmp_path / "dist")
    env = {"PYTHONPATH": os.pathsep.join([str(root), str(REPO)])}
    result = verify("--list", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "built-in: Verifier: 1.0 when the response's numeric answer" in lines["numeric"]
    assert "exact_match" in lines
    assert lines["shout"].endswith(
        "entry point testplug_checks:shout (rlstack_testplug): "
        "1.0 when the response is the reference in capitals."
    )


@pytest.mark.parametrize(
    ("content", "where"),
    [
        ('{"prompt": "a", "response": "b", "reference": "c"}\n{"prompt": "a", "resp\n', ":2:"),
        ('{"prompt": "a", "response": "b", "reference": "c"}\n\n[1, 2]\n', ":3:"),
        ('{"prompt": "a", "response": "b"}\n', ":1: missing column 'reference'"),
        ('{"prompt": null, "response": "b", "reference": "c"}\n', ":1: column 'prompt' is null"),
        ('{"prompt": "a", "response": 7, "reference": "c"}\n', ":1: column 'response' is int"),
    ],
)
def test_bad_data_file_is_one_line_naming_file_and_line(work, content, where):
    (work / "bad.jsonl").write_text(content)
    result = verify("numeric", "bad.jsonl", cwd=work)
    line = assert_one_clear_error(result, "bad.jsonl" + where)
    assert "Started a local Ray" not in result.stderr  # refused before Ray starts
    assert line


def test_unknown_verifier_and_missing_arguments_are_one_line(work):
    assert_one_clear_error(verify("numerc", "data.jsonl", cwd=work), "did you mean 'numeric'")
    assert_one_clear_error(verify("numeric", cwd=work), "needs VERIFIER and DATA.jsonl")
    assert_one_clear_error(verify("numeric", "absent.jsonl", cwd=work), "absent.jsonl")


def test_more_workers_than_the_cpus_hold_is_refused_at_once(work):
    result = verify("numeric", "data.jsonl", "--workers", "100000", cwd=work)
    assert_one_clear_error(result, "--workers 100000 asks for 10000 CPUs", "or fewer")
