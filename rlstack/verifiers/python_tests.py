"""Unit-test verifier for code: the response's Python runs with the reference's tests in the
sandbox (`rlstack.verifiers.sandbox`), and passes when every test passes.
"""

import ast
import re

from rlstack.errors import DataError, PluginError
from rlstack.verifiers.sandbox import SandboxLimits, run_python

_PYTHON_FENCE = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\r?\n(.*?)```", re.DOTALL)
_SHOWN_FAILURES = 3
_STDERR_TAIL = 1000


def extract_code(response: str) -> str:
    """The last ```python (or ```py) fenced block of a response, else the whole response."""
    blocks = _PYTHON_FENCE.findall(response)
    return blocks[-1] if blocks else response


def python_tests(
    prompt: str,
    response: str,
    reference: str,
    *,
    tests: str | None = None,
    partial_credit: bool = False,
    timeout_s: float = 10.0,
    cpu_s: int | None = None,
    memory_mb: int = 512,
    processes: int = 32,
    **extras: object,
) -> tuple[float, dict]:
    """Verifier: 1.0 when the response's code passes the tests, run in the sandbox.

    The code (see `extract_code`) runs first; then the tests, statement by statement, in the
    same namespace. Every top-level `assert` runs even when an earlier one fails; any other test
    statement that raises (a call to a `check` function, say) ends the run as a failure.

    Args:
        prompt: The prompt (unused).
        response: The model's response.
        reference: The tests when `tests` is not given: assert statements or a test snippet.
        tests: The tests; also filled by a data column named `tests`.
        partial_credit: Score the fraction of top-level asserts that pass instead of 0.0 when
            some fail (still 0.0 when the code or a non-assert statement fails, or on a limit).
        timeout_s: Wall-clock limit of the whole run, seconds.
        cpu_s: CPU-seconds limit per process (default: `timeout_s` rounded up).
        memory_mb: Address-space limit per process, MiB.
        processes: Tasks (processes and threads) the run may hold at once.
        **extras: Other fields of the data row (unused).

    Returns:
        `(score, details)`: details hold `asserts` and `failed_asserts` (counts), `failed`
        (up to three failing asserts: line, source, error), `error` (traceback or reason),
        `timed_out`, `memory_exceeded` and `stderr` (its tail).

    Raises:
        DataError: The tests are missing or are not valid Python.
        PluginError: A limit option is not a positive number.
    """
    source = tests if tests is not None else reference
    if not isinstance(source, str) or not source.strip():
        raise DataError("python_tests: no tests (the reference or a `tests` column)")
    try:
        ast.parse(source, "tests.py")
    except SyntaxError as exc:
        raise DataError(
            f"python_tests: the tests are not valid Python ({exc.msg}, line {exc.lineno})"
        ) from exc
    if not isinstance(response, str):
        return 0.0, {"error": f"the response is {type(response).__name__}, not text"}

    limits = _limits(timeout_s, cpu_s, memory_mb, processes)
    result = run_python(extract_code(response), source, limits=limits)

    details = {
        "passed": result.passed,
        "asserts": result.asserts,
        "failed_asserts": result.failures,
        "failed": result.failed[:_SHOWN_FAILURES],
        "error": result.error,
        "timed_out": result.timed_out,
        "memory_exceeded": result.memory_exceeded,
        "stderr": result.stderr[-_STDERR_TAIL:],
    }
    if result.passed:
        return 1.0, details
    if partial_credit and result.finished and result.asserts:
        return 1.0 - result.failures / result.asserts, details
    return 0.0, details


def _limits(timeout_s: float, cpu_s: int | None, memory_mb: int, processes: int) -> SandboxLimits:
    values = {"timeout_s": timeout_s, "memory_mb": memory_mb, "processes": processes}
    if cpu_s is not None:
        values["cpu_s"] = cpu_s
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise PluginError(f"python_tests: {name} must be a positive number, got {value!r}")
    cpu = values.get("cpu_s", timeout_s)
    return SandboxLimits(
        timeout_s=float(timeout_s),
        cpu_s=max(1, int(-(-cpu // 1))),
        memory_mb=int(memory_mb),
        processes=int(processes),
    )
