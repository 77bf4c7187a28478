"""Load a verifier named in the config: a built-in name, `package.module:function` or
`path/to/file.py:function`.

A verifier is a plain callable `fn(prompt, response, reference, **extras) -> float`, higher is
better (checkers return 1.0 for correct and 0.0 for wrong).

A file is imported under a module name derived from its absolute path
(`_rlstack_verifier_<stem>_<hash>`), registered in `sys.modules`; its directory is on `sys.path`
only while the file runs, so the file can import a sibling module at its top level but not later,
from inside a function. Such a function pickles by reference to that module name: to use it in
another process, send the spec string and call `load_verifier` there.
"""

import hashlib
import importlib
import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from rlstack.errors import PluginError
from rlstack.verifiers.exact import exact_match
from rlstack.verifiers.format import think_answer
from rlstack.verifiers.json_schema import json_schema
from rlstack.verifiers.numeric import numeric_match
from rlstack.verifiers.python_tests import python_tests
from rlstack.verifiers.regex import regex_match

Verifier = Callable[..., float]

BUILTIN_VERIFIERS: dict[str, Verifier] = {
    "numeric": numeric_match,
    "gsm8k": numeric_match,
    "exact_match": exact_match,
    "regex": regex_match,
    "think_answer": think_answer,
    "json_schema": json_schema,
    "python_tests": python_tests,
}


def _describe(exc: BaseException, source: Path | None = None) -> str:
    """One line naming the exception, with the line number of a syntax error."""
    if isinstance(exc, SyntaxError):
        where = f"at line {exc.lineno}"
        if exc.filename and (source is None or Path(exc.filename).resolve() != source):
            where = f"in {Path(exc.filename).name} {where}"
        text = f"SyntaxError: {exc.msg} {where}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


def _import_file(path: Path, shown: str) -> ModuleType:
    """Import a .py file under a module name unique to its absolute path."""
    if not path.is_file():
        raise PluginError(f"file not found: {path}")

    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    stem = re.sub(r"\W", "_", path.stem)
    name = f"_rlstack_verifier_{stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot import {shown} (not a Python source file)")

    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(name, None)
        raise PluginError(f"cannot import {shown} ({_describe(exc, path)})") from exc
    finally:
        if str(path.parent) in sys.path:
            sys.path.remove(str(path.parent))
    return module


def _import_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except (Exception, SystemExit) as exc:
        raise PluginError(f"cannot import module {name!r} ({_describe(exc)})") from exc


def _resolve(spec: str) -> Verifier:
    if not isinstance(spec, str):
        raise PluginError(f"expected a string, got {type(spec).__name__}")
    if spec in BUILTIN_VERIFIERS:
        return BUILTIN_VERIFIERS[spec]

    source, _, attribute = spec.rpartition(":")
    if not source or not attribute:
        raise PluginError(
            "expected 'package.module:function', 'path/to/file.py:function' or a built-in name "
            f"({', '.join(BUILTIN_VERIFIERS)})"
        )

    if source.endswith(".py") or "/" in source or "\\" in source:
        module = _import_file((Path.cwd() / Path(source).expanduser()).resolve(), source)
    else:
        module = _import_module(source)

    target: object = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise PluginError(f"{source} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise PluginError(
            f"{attribute!r} in {source} is not callable (it is {type(target).__name__})"
        )
    return target


def load_verifier(spec: str) -> Verifier:
    """Find the verifier a config names.

    Args:
        spec: A built-in name from `BUILTIN_VERIFIERS` ("numeric" and its alias "gsm8k",
            "exact_match"), `package.module:function`, or `path/to/file.py:function` (a relative
            path is taken from the current directory). The function part may be dotted
            (`Class.method`).

    Returns:
        The verifier callable.

    Raises:
        PluginError: The spec cannot be resolved; the one-line message names the spec and the
            cause, e.g. "verifier 'x.py:f': cannot import x.py (SyntaxError: invalid syntax at
            line 3)".
    """
    try:
        return _resolve(spec)
    except PluginError as exc:
        raise PluginError(f"verifier {spec!r}: {exc}") from exc.__cause__
