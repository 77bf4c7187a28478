"""`rlstack verify`: score a data set with a verifier exactly as training would, and report.

    rlstack verify VERIFIER DATA.jsonl [--json] [--timeout S] [--workers N]
                   [--failure-score X] [--arg key=value ...]
    rlstack verify --list

VERIFIER is any spec a config accepts (a built-in name, an entry-point name,
`package.module:function`, `path/to/file.py:function`); `--arg key=value` binds an option (the
value is read as YAML: `--arg max_chars=200` is a number). Every row of DATA.jsonl needs
`prompt`, `response` and `reference`; its other columns reach the verifier as extras. The rows
are scored by the training loop's verifier pool (`rlstack.scorers.verifier`) in a private local
Ray on 127.0.0.1, with the same deadline, failure score and failure kinds (`--workers 0`: in this
process, without Ray, as training with `verifier_workers: 0`).

The text report gives the pass rate (score >= 1), the mean score, failures by kind and a few
examples. `--json` prints one JSON object per row (`index`, `score`, `failure`: a kind or null,
`details` when the verifier gave some, `message` for a failure) and a last object `summary`.
`--list` prints the built-in verifiers and installed entry points with a one-line description.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import yaml

from rlstack.data.sources import jsonl_rows
from rlstack.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

COLUMNS = ("prompt", "response", "reference")
EXAMPLE_CHARS = 60
CPUS_PER_WORKER = 0.1  # Ray logical CPUs per verifier actor, as in training's default


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of `rlstack verify` to a (sub)parser; `run_verify` consumes them."""
    parser.add_argument("verifier", nargs="?", help="a verifier spec, e.g. numeric or f.py:fn")
    parser.add_argument("data", nargs="?", help="a JSONL file with prompt/response/reference")
    parser.add_argument(
        "--json", action="store_true", help="one JSON object per row, then a summary"
    )
    parser.add_argument("--list", action="store_true", help="list built-in and installed verifiers")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call (default 10)")
    parser.add_argument(
        "--workers", type=int, default=2, help="verifier actors (default 2; 0: in this process)"
    )
    parser.add_argument(
        "--failure-score", type=float, default=0.0, help="score of a failed call (default 0)"
    )
    parser.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option bound to the verifier (repeatable)",
    )
    parser.set_defaults(overrides=[])


def run_verify(args: argparse.Namespace) -> int:
    if args.list:
        print_verifier_list()
        return 0
    if args.overrides:
        raise ConfigError(f"verify: unexpected arguments {' '.join(args.overrides)}")
    if not args.verifier or not args.data:
        raise ConfigError("verify: needs VERIFIER and DATA.jsonl (or --list)")
    if args.workers < 0:
        raise ConfigError(f"verify: --workers must not be negative, got {args.workers}")
    if not args.timeout > 0:
        raise ConfigError(f"verify: --timeout must be positive, got {args.timeout}")
    if not math.isfinite(args.failure_score):
        raise ConfigError(
            f"verify: --failure-score must be a finite number, got {args.failure_score}"
        )

    from rlstack.verifiers import check_options, load_verifier, parse_verifier_entries

    options = parse_options(args.arg)
    entry = parse_verifier_entries(args.verifier, "verifier")[0]
    entry = type(entry)(entry.spec, 1.0, options, entry.label)
    check_options(load_verifier(entry.spec), options, entry.spec)  # before Ray starts
    rows = read_rows(args.data)

    result = score_rows(rows, entry, args.failure_score, args.workers, args.timeout)
    outcomes = result.outcomes[entry.label]
    summary = summarise(result.scores, outcomes, result.seconds)
    if args.json:
        for i, (score, outcome) in enumerate(zip(result.scores, outcomes)):
            print(json.dumps(row_record(i, score, outcome), default=str))
        print(json.dumps({"summary": summary}))
    else:
        print_report(args, rows, result.scores, outcomes, summary)
    return 0


def parse_options(items: list[str]) -> dict[str, Any]:
    """`key=value` strings as keyword options, each value read as YAML; a key given twice is a
    ConfigError (which value was meant is unknown)."""
    options: dict[str, Any] = {}
    given: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"verify: --arg {item!r}: expected key=value")
        if key in given:
            raise ConfigError(
                f"verify: --arg {key} is given twice ({given[key]!r} and {value!r}); give it once"
            )
        given[key] = value
        try:
            options[key] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            options[key] = value
    return options


def read_rows(path: str) -> list[dict[str, Any]]:
    """Rows of a JSONL file (or .jsonl.gz), each with string prompt, response and reference (a
    numeric reference is taken as its text).

    Raises:
        DataError: the file is missing, a line is not a JSON object, or a column is missing;
            the message names the file and line.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"data file not found: {path}")
    rows = []
    try:
        opener = gzip.open if file.name.endswith(".gz") else open
        with opener(file, "rb") as f:
            for line_no, row in jsonl_rows(f, path):
                missing = [c for c in COLUMNS if c not in row]
                if missing:
                    raise DataError(
                        f"{path}:{line_no}: missing column {', '.join(map(repr, missing))} "
                        f"(rows need {', '.join(COLUMNS)})"
                    )
                for column in COLUMNS:
                    value = row[column]
                    if column == "reference" and isinstance(value, (int, float)):
                        row[column] = value = str(value)  # a numeric answer column
                    if not isinstance(value, str):
                        kind = "null" if value is None else type(value).__name__
                        raise DataError(
                            f"{path}:{line_no}: column {column!r} is {kind}, expected a string"
                        )
                rows.append(row)
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e})") from e
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def score_rows(rows: list[dict], entry: Any, failure_score: float, workers: int, timeout: float):
    """Score rows as training does: with the training loop's pool in a private local Ray, or
    with `workers` 0 in this process (`verifier_workers: 0`); returns a ScoreResult."""
    from rlstack.scorers.verifier import VerifierScorer

    items = [
        {
            "prompt": row["prompt"],
            "response": row["response"],
            "reference": str(row["reference"]),  # as the RL stage passes it
            "extras": {k: v for k, v in row.items() if k not in COLUMNS},
        }
        for row in rows
    ]
    if workers == 0:
        return VerifierScorer([entry], failure_score, num_workers=0, timeout_s=timeout).score(items)
    if os.environ.pop("RAY_ADDRESS", None):
        logger.info("verify runs its own local Ray; RAY_ADDRESS is ignored")
    from rlstack.runtime import apply_env, init_ray

    apply_env(loopback=True)
    import ray

    env_vars = init_ray(None, None, loopback=True)
    scorer = None
    try:
        cpus = ray.cluster_resources().get("CPU", 0.0)
        if workers * CPUS_PER_WORKER > cpus + 1e-9:
            raise ConfigError(
                f"verify: --workers {workers} asks for {workers * CPUS_PER_WORKER:g} CPUs "
                f"({CPUS_PER_WORKER:g} each) but the local Ray has {cpus:g}; use --workers "
                f"{int(cpus / CPUS_PER_WORKER + 1e-9)} or fewer"
            )
        scorer = VerifierScorer(
            [entry],
            failure_score,
            num_workers=workers,
            cpus_per_worker=CPUS_PER_WORKER,
            timeout_s=timeout,
            env_vars=env_vars,
        ).start()
        return scorer.score(items)
    finally:
        if scorer is not None:
            scorer.shutdown()
        ray.shutdown()


def summarise(scores: list[float], outcomes: list, seconds: float) -> dict[str, Any]:
    failures: dict[str, int] = {}
    for outcome in outcomes:
        if outcome.failure is not None:
            failures[outcome.failure] = failures.get(outcome.failure, 0) + 1
    n = len(scores)
    passed = sum(1 for s in scores if s >= 1.0)
    return {
        "rows": n,
        "passed": passed,
        "pass_rate": passed / n,
        "mean_score": sum(scores) / n,
        "failures": failures,
        "seconds": round(seconds, 3),
    }


def row_record(index: int, score: float, outcome: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"index": index, "score": score, "failure": outcome.failure}
    if outcome.details is not None:
        record["details"] = outcome.details
    if outcome.message is not None:
        record["message"] = outcome.message
    return record


def print_report(
    args: argparse.Namespace, rows: list[dict], scores: list[float], outcomes: list, summary: dict
) -> None:
    n = summary["rows"]
    where = f"{args.workers} workers" if args.workers else "in this process"
    print(
        f"verifier {args.verifier} on {args.data}: {n} rows in {summary['seconds']:.1f}s "
        f"({where}, {args.timeout:g}s per call)"
    )
    print(f"pass rate (score >= 1): {summary['pass_rate']:.1%} ({summary['passed']} of {n})")
    print(f"mean score: {summary['mean_score']:.4f}")
    if summary["failures"]:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(summary["failures"].items()))
        print(f"failures (scored {args.failure_score:g}): {kinds}")
    else:
        print("failures: none")
    print("examples:")
    for i in pick_examples(scores, outcomes):
        outcome = outcomes[i]
        line = f"  [{i}] score {scores[i]:g}"
        if outcome.failure is not None:
            line += f" [{outcome.failure}: {outcome.message}]"
        line += f"  response {_clip(rows[i]['response'])}  reference {_clip(rows[i]['reference'])}"
        if outcome.details is not None:
            line += f"  details {_clip(outcome.details, quote=False)}"
        print(line)


def pick_examples(scores: list[float], outcomes: list, limit: int = 5) -> list[int]:
    """The first passing row, the first failing row, and the first row of each failure kind."""
    picked: list[int] = []
    wanted = [lambda i: scores[i] >= 1.0, lambda i: scores[i] < 1.0 and not outcomes[i].failure]
    for kind in dict.fromkeys(o.failure for o in outcomes if o.failure is not None):
        wanted.append(lambda i, kind=kind: outcomes[i].failure == kind)
    for test in wanted:
        i = next((i for i in range(len(scores)) if test(i)), None)
        if i is not None and i not in picked:
            picked.append(i)
    return sorted(picked[:limit])


def print_verifier_list() -> None:
    from rlstack.verifiers import available_verifiers

    found = available_verifiers()
    width = max(len(name) for name, _, _ in found)
    for name, origin, description in found:
        print(f"{name:<{width}}  {origin}: {description}")


def _clip(value: Any, quote: bool = True) -> str:
    """A short one-line form: strings quoted (whitespace shows), other values as JSON."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) > EXAMPLE_CHARS:
        text = text[: EXAMPLE_CHARS - 3] + "..."
    return repr(text) if quote else text
