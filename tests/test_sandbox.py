"""The code sandbox: limits, isolation and the good path, with real subprocesses.

Each isolation property is checked twice where the machine allows it: with every layer on, and
with the audit hook off, so the kernel layer (rlimits, user and network namespace) alone is
shown to hold. Escapes aim only at files and sockets this test creates.
"""

import os
import socket
import time

import pytest

from rlstack.verifiers.sandbox import SandboxLimits, namespaces_available, run_python

KERNEL_ONLY = {"audit": False}


def _needs_namespaces():
    if not namespaces_available():
        pytest.skip("this kernel or container refuses an unprivileged user+network namespace")


def _gone(pid: int) -> bool:
    """No such process, or only a zombie waiting for init to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# --- the good path ---------------------------------------------------------------------------


def test_code_and_passing_tests_pass_and_leave_no_directory():
    code = "import os\nprint(os.getcwd())\ndef add(a, b):\n    return a + b\n"
    result = run_python(code, "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n")

    assert result.passed, result
    assert result.exit_code == 0 and result.error is None
    assert result.asserts == 2 and result.failed == []
    workdir = result.stdout.strip()
    assert os.path.basename(workdir).startswith("rlstack-sandbox-")
    assert not os.path.exists(workdir)


def test_code_may_write_inside_its_own_directory():
    code = "open('out.txt', 'w').write('x' * 10)\nassert open('out.txt').read() == 'x' * 10\n"

    assert run_python(code).passed


def test_failing_asserts_are_each_reported_and_later_ones_still_run():
    result = run_python("def f(x):\n    return x\n", "assert f(1) == 2, 'one'\nassert f(2) == 2\n")

    assert not result.passed and result.finished
    assert result.asserts == 2
    assert result.failed == [
        {"line": 1, "source": "assert f(1) == 2, 'one'", "error": "AssertionError: one"}
    ]


def test_syntax_error_in_code_fails_with_the_error():
    result = run_python("def f(:\n    pass\n", "assert True")

    assert not result.passed and not result.finished
    assert "SyntaxError" in result.error


def test_early_exit_with_status_zero_does_not_pass():
    # os._exit skips the child's end-of-run report, so the tests cannot have run
    result = run_python("import os\nos._exit(0)\n", "assert False")

    assert result.exit_code == 0
    assert not result.passed


def test_sys_exit_in_code_does_not_skip_the_tests():
    result = run_python("import sys\nsys.exit(0)\n", "assert 1 == 2")

    assert not result.passed
    assert len(result.failed) == 1


def test_environment_is_minimal(monkeypatch):
    monkeypatch.setenv("RLSTACK_SANDBOX_SECRET", "do-not-leak")
    result = run_python("import os\nprint(sorted(os.environ))\n")

    assert result.passed
    assert "RLSTACK_SANDBOX_SECRET" not in result.stdout
    assert "do-not-leak" not in result.stdout


def test_output_is_cut_to_its_tail():
    result = run_python(
        "print('a' * 500_000)\nprint('the end')\n", limits=SandboxLimits(output_kb=4)
    )

    assert result.passed
    assert len(result.stdout) <= 4 * 1024
    assert result.stdout.rstrip().endswith("the end")


# --- files -----------------------------------------------------------------------------------

WRITE_ATTEMPTS = {
    "open": "open({target!r}, 'w').write('escaped')",
    "os.open": "import os\nos.write(os.open({target!r}, os.O_WRONLY | os.O_CREAT), b'escaped')",
    "pathlib": "import pathlib\npathlib.Path({target!r}).write_text('escaped')",
    "relative": "import os\nrel = os.path.relpath({target!r})\nopen(rel, 'w').write('escaped')",
    "symlink": "import os\nos.symlink({target!r}, 'link')\nopen('link', 'w').write('escaped')",
    "rename": "open('here', 'w').write('escaped')\nimport os\nos.rename('here', {target!r})",
    "shutil": "import shutil\nopen('here', 'w').write('escaped')\nshutil.copy('here', {target!r})",
    "dir_fd": (
        "import os\nfd = os.open({outside!r}, os.O_RDONLY)\n"
        "os.write(os.open('escaped.txt', os.O_WRONLY | os.O_CREAT, dir_fd=fd), b'escaped')"
    ),
}


@pytest.mark.parametrize("attempt", sorted(WRITE_ATTEMPTS))
def test_code_cannot_write_outside_its_directory(tmp_path, attempt):
    target = tmp_path / "escaped.txt"
    code = WRITE_ATTEMPTS[attempt].format(target=str(target), outside=str(tmp_path))

    result = run_python(code)

    assert not result.passed
    assert not target.exists()
    assert os.listdir(tmp_path) == []


def test_kernel_layer_alone_stops_writes_outside_when_root(tmp_path):
    _needs_namespaces()
    if os.geteuid() != 0:
        pytest.skip("without root the sandbox keeps the caller's uid: only the audit hook guards")
    target = tmp_path / "escaped.txt"

    result = run_python(f"open({str(target)!r}, 'w').write('escaped')", **KERNEL_ONLY)

    assert not result.passed
    assert "PermissionError" in result.error
    assert not target.exists()


# --- network ---------------------------------------------------------------------------------


@pytest.mark.parametrize("layers", ["all", "kernel_only"])
def test_code_cannot_connect_to_a_listening_socket(layers):
    if layers == "kernel_only":
        _needs_namespaces()
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    code = (
        "import socket\n"
        f"s = socket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
        "s.sendall(b'hello')\n"
    )
    try:
        result = run_python(code, **(KERNEL_ONLY if layers == "kernel_only" else {}))
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()

    assert not result.passed
    expected = "Network is unreachable" if layers == "kernel_only" else "socket"
    assert expected in result.error


# --- memory, time, processes -----------------------------------------------------------------


@pytest.mark.parametrize("layers", ["all", "kernel_only"])
def test_allocating_beyond_the_memory_limit_fails_fast(layers):
    start = time.monotonic()

    result = run_python(
        "block = bytearray(1024 * 1024 * 1024)\n",
        limits=SandboxLimits(memory_mb=256),
        **(KERNEL_ONLY if layers == "kernel_only" else {}),
    )

    assert not result.passed
    assert result.memory_exceeded
    assert not result.timed_out
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("loop", ["while True:\n    pass\n", "import time\ntime.sleep(60)\n"])
def test_endless_code_is_killed_at_the_time_limit(loop):
    start = time.monotonic()

    result = run_python(loop, limits=SandboxLimits(timeout_s=1.5))

    elapsed = time.monotonic() - start
    assert result.timed_out and not result.passed
    assert result.exit_code == -9
    assert 1.5 <= elapsed < 1.5 + 2.0


def test_cpu_limit_stops_a_busy_loop_before_the_wall_clock():
    result = run_python("while True:\n    pass\n", limits=SandboxLimits(timeout_s=20, cpu_s=1))

    assert result.timed_out and not result.passed
    assert result.duration_s < 10


def test_process_creation_is_refused_by_the_audit_hook():
    for code in (
        "import os\nos.fork()\n",
        "import os\nos.system('true')\n",
        "import subprocess\nsubprocess.run(['true'])\n",
        "import ctypes\n",
    ):
        result = run_python(code)
        assert not result.passed, code
        assert "sandbox:" in result.error, code


FORK_BOMB = """
import os, time
children = []
try:
    while True:
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        children.append(pid)
except OSError as exc:
    print(len(children), children)
    raise
"""


def test_fork_bomb_stops_at_the_process_limit_and_leaves_nothing_behind():
    # The audit hook is off so that the fork bomb reaches the kernel's limit; without a user
    # namespace, uid 0 is exempt from RLIMIT_NPROC and this would be a real fork bomb.
    if os.geteuid() == 0:
        _needs_namespaces()

    result = run_python(FORK_BOMB, limits=SandboxLimits(processes=16, timeout_s=10), **KERNEL_ONLY)

    assert not result.passed and not result.timed_out
    assert "Resource temporarily unavailable" in result.error
    count, pids = result.stdout.split(" ", 1)
    assert int(count) < 16
    time.sleep(0.1)
    assert all(_gone(int(pid)) for pid in pids.strip("[]\n ").split(", ") if pid)


def test_processes_left_behind_in_a_new_session_are_killed():
    # A child that leaves the process group is still found through the user namespace.
    _needs_namespaces()
    code = (
        "import os, time\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.setsid()\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "print(pid)\n"
    )

    result = run_python(code, **KERNEL_ONLY)

    assert result.passed, result
    time.sleep(0.1)
    assert _gone(int(result.stdout))


def test_code_cannot_read_files_outside_the_interpreter_and_its_directory(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("credentials")

    result = run_python(f"print(open({str(secret)!r}).read())")

    assert not result.passed
    assert "credentials" not in result.stdout
    assert "sandbox: reading" in result.error


def test_code_may_import_the_standard_library_and_installed_packages():
    code = "import json, collections, fractions, zoneinfo, numpy\nprint(numpy.arange(3).sum())\n"

    result = run_python(code)

    assert result.passed, result.error
    assert result.stdout.strip() == "3"


def test_memory_limit_below_what_the_interpreter_needs_reads_as_memory_exceeded():
    result = run_python("x = 1\n", limits=SandboxLimits(memory_mb=8))

    assert not result.passed
    assert result.memory_exceeded


def test_every_failing_assert_is_counted_and_the_first_ones_listed():
    tests = "".join(f"assert {i} < 10\n" for i in range(100))

    result = run_python("", tests)

    assert result.finished and not result.passed
    assert (result.asserts, result.failures) == (100, 90)
    assert len(result.failed) == 20
    assert result.failed[0] == {"line": 11, "source": "assert 10 < 10", "error": "AssertionError"}


def test_sub_interpreters_are_refused():
    result = run_python("import _xxsubinterpreters\n")

    assert not result.passed
    assert "sandbox: importing _xxsubinterpreters" in result.error
