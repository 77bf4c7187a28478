"""The first code a sandboxed Python process runs (`python -I -B sandbox_child.py`).

Started by `rlstack.verifiers.sandbox`; not meant to be run by hand. It imports only the
standard library (the `-I` flag keeps rlstack and the caller's environment off `sys.path`), and:

1. reads its job from stdin: one JSON line with the code, optional tests, the limits and a
   token that marks its final report;
2. sets the resource limits that apply to this process and every process it starts;
3. moves into a new user and network namespace when asked (a network with no interface up), and
   tells the parent on the report pipe, which then writes the user-id maps when it is root;
   as root it then becomes an unprivileged user that keeps only the right to read files;
4. installs a PEP 578 audit hook that refuses sockets, process creation, native code, writes
   outside the sandbox directory and a few other escapes;
5. runs the code, then each top-level statement of the tests, and writes one JSON report line,
   prefixed by the token, to the report pipe.

A run that ends without that report (the code called `os._exit`, was killed, ran out of memory
before the hook) did not pass, whatever its exit status.
"""

import ast
import json
import linecache
import os
import resource
import sys
import traceback

# Exit status when the code or the tests raised MemoryError.
MEMORY_EXIT = 3
# Failing asserts described in the report (all are counted).
MAX_LISTED_FAILURES = 20
# The in-namespace ids the sandboxed code runs as when the parent is root (mapped to nobody).
NS_UID = NS_GID = 1

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_PR_SET_KEEPCAPS = 8
_PR_SET_NO_NEW_PRIVS = 38
_CAP_DAC_READ_SEARCH = 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# Audit events refused outright. Prefixes end with a dot.
_BLOCKED_EVENTS = frozenset(
    {
        "os.system",
        "os.fork",
        "os.forkpty",
        "os.posix_spawn",
        "os.spawn",
        "os.exec",
        "os.kill",
        "os.killpg",
        "os.startfile",
        "os.chroot",
        "pty.spawn",
        "subprocess.Popen",
        "resource.setrlimit",
        "resource.prlimit",
        "signal.pthread_kill",
        "sys.addaudithook",
        "code.__new__",
        "gc.get_objects",
        "gc.get_referrers",
        "gc.get_referents",
        "sys._current_frames",
        "webbrowser.open",
        "sqlite3.enable_load_extension",
        "sqlite3.load_extension",
    }
)
_BLOCKED_PREFIXES = (
    "socket.",
    "ctypes.",
    "_ctypes.",
    "urllib.",
    "http.",
    "ftplib.",
    "smtplib.",
    "poplib.",
    "imaplib.",
    "nntplib.",
    "telnetlib.",
    "winreg.",
    "_winapi.",
    "msvcrt.",
)
# Modules whose import is refused: native-code access, raw process creation, and
# sub-interpreters (audit hooks belong to one interpreter; a new one would start without).
_BLOCKED_MODULES = frozenset(
    {
        "ctypes",
        "_ctypes",
        "_posixsubprocess",
        "_xxsubinterpreters",
        "_interpreters",
        "_xxinterpchannels",
        "_interpchannels",
        "_interpqueues",
    }
)
# Events that change the file system at the path(s) given as their first argument(s).
_PATH_EVENTS = {
    "os.remove": 1,
    "os.rmdir": 1,
    "os.mkdir": 1,
    "os.chmod": 1,
    "os.chown": 1,
    "os.chflags": 1,
    "os.lchflags": 1,
    "os.utime": 1,
    "os.truncate": 1,
    "os.setxattr": 1,
    "os.removexattr": 1,
    "os.rename": 2,
    "os.link": 2,
    "os.symlink": 2,
    "shutil.chown": 1,
    "sqlite3.connect": 1,
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_WRITABLE_ANYWHERE = frozenset({os.devnull})


class SandboxViolation(PermissionError):
    """Raised inside the sandbox when the code tries something the audit hook refuses."""


def _libc():
    import ctypes

    return ctypes, ctypes.CDLL(None, use_errno=True)


def _check(ctypes, result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _set_limits(limits: dict) -> None:
    """Every limit but the process count, which depends on the namespace (see `_set_nproc`)."""
    cpu = int(limits["cpu_s"])
    memory = int(limits["memory_mb"]) * 2**20
    fsize = int(limits["file_size_mb"]) * 2**20
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits["open_files"], limits["open_files"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _tasks_of_uid(uid: int) -> int:
    """How many tasks (processes and threads) this real uid runs now, as far as /proc shows."""
    count = 0
    for pid in os.listdir("/proc") if os.path.isdir("/proc") else []:
        try:
            if pid.isdigit() and os.stat(f"/proc/{pid}").st_uid == uid:
                count += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            continue
    return count


def _set_nproc(limit: int, in_namespace: bool) -> None:
    """RLIMIT_NPROC counts a uid's tasks; in a user namespace of its own only the sandbox's."""
    if not in_namespace:
        limit += _tasks_of_uid(os.getuid())
    resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))


def _enter_namespace(report_fd: int, as_root: bool) -> bool:
    """Move into a new user and network namespace; False if the kernel refuses.

    Writes b"u" (inside) or b"n" (not) to the report pipe. Inside, when the parent is root it
    writes the id maps (in-namespace 0 -> root, 1 -> nobody) and answers on stdin; otherwise this
    process maps its own uid. Either way the network namespace has only a loopback that is down.
    """
    ctypes, libc = _libc()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
        os.write(report_fd, b"n")
        return False
    os.write(report_fd, b"u")

    if as_root:
        if sys.stdin.buffer.readline().strip() != b"mapped":
            raise SystemExit("sandbox: the parent did not map the user namespace")
        _drop_to_reader(ctypes, libc)
    else:
        uid, gid = os.geteuid(), os.getegid()
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"{uid} {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"{gid} {gid} 1")
    return True


def _drop_to_reader(ctypes, libc) -> None:
    """Become uid/gid NS_UID (nobody outside) keeping only CAP_DAC_READ_SEARCH in the namespace.

    Root's files stay readable (the interpreter may live in a directory only root can enter) but
    nothing root owns is writable, and RLIMIT_NPROC applies (the kernel exempts uid 0).
    """
    os.setgroups([])
    os.setgid(NS_GID)
    _check(ctypes, libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
    os.setuid(NS_UID)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [(n, ctypes.c_uint32) for n in ("effective", "permitted", "inheritable")]

    data = (Data * 2)()
    data[0].effective = data[0].permitted = 1 << _CAP_DAC_READ_SEARCH
    header = Header(_LINUX_CAPABILITY_VERSION_3, 0)
    _check(ctypes, libc.capset(ctypes.byref(header), data), "capset")


def _no_new_privileges() -> None:
    """Set-user-id programs no longer raise privileges when executed."""
    ctypes, libc = _libc()
    _check(ctypes, libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


def _forget_ctypes() -> None:
    for name in [m for m in sys.modules if m == "ctypes" or m.startswith(("ctypes.", "_ctypes"))]:
        del sys.modules[name]


def _readable_roots(root: str) -> tuple[str, ...]:
    """Directories the code may read: its own, the interpreter's and its packages', time zones."""
    places = [root, sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    places += [p for p in sys.path if p] + ["/usr/share/zoneinfo"]
    return tuple(sorted({os.path.realpath(p) for p in places}))


def _make_hook(root: str, readable: tuple[str, ...]):
    """The audit hook: refuses the events above, writes outside `root` and reads outside
    `readable`."""
    realpath, fspath, fsdecode, commonpath, isdir = (
        os.path.realpath,
        os.fspath,
        os.fsdecode,
        os.path.commonpath,
        os.path.isdir,
    )
    blocked, prefixes, modules = _BLOCKED_EVENTS, _BLOCKED_PREFIXES, _BLOCKED_MODULES
    path_events, write_flags, anywhere = _PATH_EVENTS, _WRITE_FLAGS, _WRITABLE_ANYWHERE
    violation = SandboxViolation

    def resolve(path) -> str | None:
        """The absolute path with links resolved; None if it is not a path."""
        try:
            return realpath(fsdecode(fspath(path)))
        except (TypeError, ValueError):
            return None

    def under(resolved: str, place: str) -> bool:
        return commonpath([resolved, place]) == place

    def inside(path) -> bool:
        if isinstance(path, int):
            return True  # an already open descriptor
        resolved = resolve(path)
        if resolved is None:
            return False
        return resolved in anywhere or under(resolved, root)

    def hook(event: str, args: tuple) -> None:
        if event in blocked or event.startswith(prefixes):
            raise violation(f"sandbox: {event} is not allowed")
        if event == "import":
            if args[0] in modules:
                raise ImportError(f"sandbox: importing {args[0]} is not allowed")
        elif event == "open":
            path, mode, flags = args
            if path is None or isinstance(path, int) or inside(path):
                return
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & write_flags
            )
            if writes:
                raise violation(f"sandbox: writing {path!r} (outside the sandbox) is not allowed")
            resolved = resolve(path) or ""
            if resolved != "/etc/localtime" and not any(under(resolved, p) for p in readable):
                raise violation(f"sandbox: reading {path!r} is not allowed")
            if isdir(resolved):  # a directory descriptor would let os.open(dir_fd=) escape
                raise violation(f"sandbox: opening directory {path!r} is not allowed")
        elif event in path_events:
            for path in args[: path_events[event]]:
                if not inside(path):
                    raise violation(f"sandbox: {event} on {path!r} is not allowed")
        elif event == "object.__setattr__" and args[1] in ("__code__", "__globals__"):
            raise violation(f"sandbox: setting {args[1]} is not allowed")

    return hook


def _show_source(filename: str, source: str) -> None:
    """Let tracebacks quote lines of the code and tests, which exist in no file."""
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)


def _format_error(exc: BaseException) -> str:
    """The traceback without this module's own frame that ran the code."""
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    return "".join(traceback.format_exception(type(exc), exc, tb))[-4000:]


def _describe(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()[-500:]


def _compile_tests(tests: str) -> list[tuple]:
    """Each top-level statement of the tests: (code object, is an assert, line, source)."""
    return [
        (
            compile(ast.Module([node], []), "tests.py", "exec"),
            isinstance(node, ast.Assert),
            node.lineno,
            ast.get_source_segment(tests, node) or "",
        )
        for node in ast.parse(tests, "tests.py").body
    ]


def _run(code: str, tests: str | None, namespace: dict) -> dict:
    """Run the code, then the tests statement by statement; the report as a dict.

    Everything the run depends on after the code starts (the compiled tests, `exec`, the
    exception classes) is bound here first, so code that replaces builtins or patches modules
    cannot skip the tests.
    """
    run, listed, describe, format_error = exec, MAX_LISTED_FAILURES, _describe, _format_error
    memory_error, system_exit, base_exception = MemoryError, SystemExit, BaseException
    report = {
        "phase": "code",
        "error": None,
        "asserts": 0,
        "failures": 0,
        "failed": [],
        "memory_error": False,
    }
    try:
        _show_source("solution.py", code)
        statements = None
        if tests is not None:
            _show_source("tests.py", tests)
            statements = _compile_tests(tests)
        compiled = compile(code, "solution.py", "exec")
    except BaseException as exc:  # noqa: B036 - a syntax error, or out of memory already
        report["error"] = format_error(exc)
        return report

    try:
        try:
            run(compiled, namespace)
        except system_exit as exc:
            # With tests, a script's sys.exit() ends the code, not the run: the tests decide.
            if statements is None and exc.code not in (None, 0):
                report["error"] = f"SystemExit: {exc.code}"
                return report
        if statements is None:
            report["phase"] = "done"
            return report

        report["phase"] = "tests"
        for statement, is_assert, line, source in statements:
            if not is_assert:
                try:
                    run(statement, namespace)
                except system_exit as exc:
                    raise RuntimeError(f"the tests exited early (SystemExit: {exc.code})") from exc
                continue
            report["asserts"] += 1
            try:
                run(statement, namespace)
            except memory_error:
                raise
            except base_exception as exc:  # noqa: B036 - SystemExit inside an assert fails it
                report["failures"] += 1
                if len(report["failed"]) < listed:
                    report["failed"].append({"line": line, "source": source, "error": ""})
                    report["failed"][-1]["error"] = describe(exc)
        report["phase"] = "done"
    except memory_error:
        report["memory_error"] = True
        report["error"] = "MemoryError: the sandbox's memory limit was reached"
    except base_exception as exc:  # noqa: B036 - everything the sandboxed code raises is reported
        report["error"] = format_error(exc)
    return report


def _report_encoder():
    """A JSON encoder made of C functions only, bound before the code can patch `json`."""
    from json import encoder

    if encoder.c_make_encoder is None:
        return json.dumps
    make = encoder.c_make_encoder(
        None, repr, encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True
    )
    join = "".join
    return lambda report: join(make(report, 0))


def main() -> None:
    job = json.loads(sys.stdin.buffer.readline())
    report_fd = int(job["report_fd"])
    _set_limits(job["limits"])

    in_namespace = False
    if job["namespaces"]:
        in_namespace = _enter_namespace(report_fd, as_root=job["parent_is_root"])
    else:
        os.write(report_fd, b"n")
    _set_nproc(int(job["limits"]["processes"]), in_namespace)
    _no_new_privileges()
    _forget_ctypes()

    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.umask(0o077)

    token, code, tests = job["token"], job["code"], job.get("tests")
    write, encode, exit_now = os.write, _report_encoder(), os._exit
    if job["audit"]:
        root = os.path.realpath(job["root"])
        sys.addaudithook(_make_hook(root, _readable_roots(root)))
    del job

    report = _run(code, tests, {"__name__": "__main__", "__builtins__": __builtins__})
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: B036 - the report matters more than a broken stream
        pass
    write(report_fd, ("\n" + token + " " + encode(report) + "\n").encode())
    if report["memory_error"]:
        exit_now(MEMORY_EXIT)
    exit_now(0 if report["error"] is None and not report["failures"] else 1)


if __name__ == "__main__":
    main()
