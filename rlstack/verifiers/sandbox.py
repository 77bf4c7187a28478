"""Run untrusted Python (a model's response) in a subprocess with limits.

`run_python(code, tests)` starts `python -I -B sandbox_child.py` in a fresh temporary directory
(its working directory, removed afterwards) with a minimal environment, in a session and process
group of its own. The child sets the resource limits, enters its namespaces, installs an audit
hook, runs the code and then the tests, and reports on a pipe of its own. Protection is layered:

- kernel limits (setrlimit, inherited by every process the code starts): CPU seconds, address
  space, tasks, file size, open files, no core files; the wall-clock limit kills the process group
  and every process left in the sandbox's user namespace;
- Linux namespaces, when the kernel lets this user create them (probed once per process): a new
  user and network namespace, so the network has no interface up; when the caller is root the
  code runs as an unprivileged user (nobody outside the namespace) that may read root's files but
  not write them, with no capabilities but reading, and set-user-id programs do not elevate it;
- a PEP 578 audit hook (see sandbox_child.py): no sockets, no new processes, no ctypes, no writes
  outside the directory, no reads outside it, the interpreter and the installed packages.

Linux only. See docs/verifiers-builtin.md ("Code sandbox") for the full list and the limits.

The audit hook is not a security boundary: it cannot stop native code, and Python code that
walks the interpreter's frames can find the token that marks a passing report. Without namespaces
(a container that forbids them) it is the only file and network barrier, and as root the process
limit does not apply (the kernel exempts uid 0). Hostile code belongs in a container or gVisor.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rlstack.errors import PluginError
from rlstack.verifiers import sandbox_child

logger = logging.getLogger(__name__)

_CHILD = Path(sandbox_child.__file__).resolve()
# In-namespace ids 0 and NS_UID map to root and to nobody when the parent is root.
_NOBODY = 65534
_REPORT_LIMIT = 1 << 20
# What stderr shows when the interpreter itself runs out of address space.
_OUT_OF_MEMORY = ("MemoryError", "Cannot allocate memory", "failed to map segment", "out of memory")


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed run; each applies to every process the code starts."""

    timeout_s: float = 10.0  # wall clock, from start to end; then the whole group is killed
    cpu_s: int = 10  # CPU seconds per process (RLIMIT_CPU; SIGXCPU, then SIGKILL a second later)
    memory_mb: int = 512  # address space per process (RLIMIT_AS), MiB; the interpreter included
    processes: int = 32  # tasks (processes and threads) the sandbox may run at once (RLIMIT_NPROC)
    file_size_mb: int = 16  # largest file it may write (RLIMIT_FSIZE), MiB
    open_files: int = 64  # open descriptors per process (RLIMIT_NOFILE)
    output_kb: int = 64  # the tail of stdout and of stderr kept in the result, KiB


@dataclass
class SandboxResult:
    """What a sandboxed run did."""

    passed: bool  # ran to the end: no exception, every test passed, exit status 0, in time
    exit_code: int | None  # negative: killed by that signal (-9 SIGKILL, -24 SIGXCPU)
    timed_out: bool  # wall-clock or CPU limit reached
    memory_exceeded: bool  # the address-space limit was reached (MemoryError or no memory)
    stdout: str  # tail
    stderr: str  # tail
    error: str | None = None  # the traceback or reason when it did not pass
    finished: bool = False  # the code and every test statement ran (some asserts may have failed)
    asserts: int = 0  # top-level assert statements in the tests
    failures: int = 0  # of which failed
    failed: list[dict] = field(default_factory=list)  # the first 20 failures: line, source, error
    duration_s: float = 0.0
    namespaces: bool = False  # whether it ran in its own user and network namespace

    def to_dict(self) -> dict:
        return asdict(self)


class _Tail:
    """Reads a stream to its end in a thread, keeping only the last `limit` bytes."""

    def __init__(self, stream, limit: int) -> None:
        self.data = bytearray()
        self.limit = limit
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:
        with stream:
            for chunk in iter(lambda: stream.read1(65536), b""):
                self.data += chunk
                if len(self.data) > 2 * self.limit:
                    del self.data[: -self.limit]

    def text(self, timeout: float) -> str:
        self.thread.join(timeout)
        return bytes(self.data[-self.limit :]).decode("utf-8", "replace")


def _minimal_env(root: str) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": root,
        "TMPDIR": root,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _read_byte(fd: int, deadline: float) -> bytes:
    ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
    return os.read(fd, 1) if ready else b""


def _map_ids(pid: int) -> None:
    """Map the child's namespace ids 0 -> root and NS_UID -> nobody (the parent is root)."""
    for kind, inner in (("uid", sandbox_child.NS_UID), ("gid", sandbox_child.NS_GID)):
        with open(f"/proc/{pid}/{kind}_map", "w") as f:
            f.write(f"0 0 1\n{inner} {_NOBODY} 1\n")


def _user_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/user")
    except OSError:
        return None


def _kill_namespace(namespace: str) -> None:
    """SIGKILL every process in the given user namespace (the sandbox's own), until none is left."""
    for _ in range(10):
        found = False
        for entry in os.listdir("/proc"):
            if entry.isdigit() and _user_namespace(int(entry)) == namespace:
                found = True
                try:
                    os.kill(int(entry), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if not found:
            return
        time.sleep(0.01)


def _wait_unreaped(pid: int, deadline: float) -> bool:
    """Wait for the child to exit without reaping it (its pid and group stay reserved)."""
    pause = 0.002
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
    return False


def _parse_report(data: bytes, token: str) -> dict | None:
    prefix = token + " "
    for line in reversed(data.decode("utf-8", "replace").splitlines()):
        if line.startswith(prefix):
            try:
                return json.loads(line[len(prefix) :])
            except ValueError:
                return None
    return None


def run_python(
    code: str,
    tests: str | None = None,
    *,
    limits: SandboxLimits | None = None,
    audit: bool = True,
    namespaces: bool | None = None,
) -> SandboxResult:
    """Run `code`, then `tests`, in a sandboxed Python process.

    The tests run statement by statement in the code's namespace (`__name__ == "__main__"`):
    every top-level `assert` runs even when an earlier one failed (each failure is listed), any
    other statement that raises ends the run. A `sys.exit()` in the code ends the code only;
    in the tests it is a failure.

    Args:
        code: Python source to run.
        tests: Python source run after it (assert statements, a test snippet), or None.
        limits: The limits; `SandboxLimits()` when None.
        audit: Install the audit hook. Off only to test the other layers on their own.
        namespaces: Use a user and network namespace: None uses them when the kernel allows it,
            False never (to test the other layers), True always (fails to start if refused).

    Returns:
        The result; `passed` only when the child's own end-of-run report says so, so code that
        leaves early with `os._exit(0)` does not pass.

    Raises:
        PluginError: Not on Linux.
    """
    if not sys.platform.startswith("linux"):
        raise PluginError("the code sandbox runs on Linux only")
    limits = limits or SandboxLimits()
    if namespaces is None:
        namespaces = namespaces_available()
    as_root = os.geteuid() == 0
    root = tempfile.mkdtemp(prefix="rlstack-sandbox-")
    try:
        if as_root and namespaces:
            os.chown(root, _NOBODY, _NOBODY)
        return _run(code, tests, limits, root, audit, namespaces, as_root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run(
    code: str,
    tests: str | None,
    limits: SandboxLimits,
    root: str,
    audit: bool,
    namespaces: bool,
    as_root: bool,
) -> SandboxResult:
    token = secrets.token_hex(16)
    report_r, report_w = os.pipe()
    start = time.monotonic()
    deadline = start + limits.timeout_s
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", str(_CHILD)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=root,
            env=_minimal_env(root),
            start_new_session=True,
            pass_fds=(report_w,),
        )
    finally:
        os.close(report_w)

    tail = limits.output_kb * 1024
    stdout, stderr = _Tail(proc.stdout, tail), _Tail(proc.stderr, tail)
    job = {
        "code": code,
        "tests": tests,
        "token": token,
        "root": root,
        "report_fd": report_w,
        "limits": asdict(limits),
        "audit": audit,
        "namespaces": namespaces,
        "parent_is_root": as_root,
    }
    namespace = None
    try:
        try:
            proc.stdin.write((json.dumps(job) + "\n").encode())
            proc.stdin.flush()
            if _read_byte(report_r, deadline) == b"u":
                namespace = _user_namespace(proc.pid)
                if as_root:
                    _map_ids(proc.pid)
                    proc.stdin.write(b"mapped\n")
                    proc.stdin.flush()
        except (BrokenPipeError, OSError) as err:
            logger.debug("sandbox start-up interrupted: %s", err)
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass

        report_reader = _Tail(os.fdopen(report_r, "rb", closefd=True), _REPORT_LIMIT)
        report_r = -1
        exited = _wait_unreaped(proc.pid, deadline)
    finally:
        if report_r >= 0:
            os.close(report_r)
        # The group and the namespace may hold processes the code left behind, even after exit.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if namespace is not None and namespace != _user_namespace(os.getpid()):
            _kill_namespace(namespace)
        proc.wait()

    report = report_reader.text(timeout=2.0).encode()
    return _result(
        proc.returncode,
        not exited,
        _parse_report(report, token),
        stdout.text(timeout=2.0),
        stderr.text(timeout=2.0),
        time.monotonic() - start,
        namespace is not None,
    )


def _result(
    exit_code: int,
    wall_timeout: bool,
    report: dict | None,
    stdout: str,
    stderr: str,
    duration_s: float,
    namespaces: bool,
) -> SandboxResult:
    timed_out = wall_timeout or exit_code == -signal.SIGXCPU
    memory = exit_code == sandbox_child.MEMORY_EXIT or (
        report is None and any(sign in stderr for sign in _OUT_OF_MEMORY)
    )
    if report is not None:
        memory = memory or report["memory_error"]
    finished = (
        report is not None
        and report["phase"] == "done"
        and report["error"] is None
        and exit_code in (0, 1)
        and not timed_out
    )
    passed = finished and exit_code == 0 and not report["failures"]

    if passed:
        error = None
    elif timed_out:
        error = "time limit reached" + (" (wall clock)" if wall_timeout else " (CPU)")
    elif report is not None and (report["error"] or report["failures"]):
        error = report["error"] or f"{report['failures']} of {report['asserts']} asserts failed"
    elif exit_code < 0:
        try:
            error = f"killed by signal {signal.Signals(-exit_code).name}"
        except ValueError:
            error = f"killed by signal {-exit_code}"
    else:
        error = f"ended without a report (exit status {exit_code})"

    return SandboxResult(
        passed=passed,
        exit_code=exit_code,
        timed_out=timed_out,
        memory_exceeded=memory,
        stdout=stdout,
        stderr=stderr,
        error=error,
        finished=finished,
        asserts=report["asserts"] if report else 0,
        failures=report["failures"] if report else 0,
        failed=report["failed"] if report else [],
        duration_s=round(duration_s, 3),
        namespaces=namespaces,
    )


@functools.cache
def namespaces_available() -> bool:
    """Whether a sandbox can run in a user and network namespace here (tried once a process)."""
    if not sys.platform.startswith("linux"):
        return False
    result = run_python("pass", limits=SandboxLimits(timeout_s=20.0), namespaces=True)
    if not (result.passed and result.namespaces):
        logger.warning(
            "sandbox: this kernel or container refuses an unprivileged user+network namespace; "
            "network and file isolation rest on the audit hook alone (%s)",
            (result.error or "").strip()[-200:] or result.stderr.strip()[-200:],
        )
        return False
    return True
