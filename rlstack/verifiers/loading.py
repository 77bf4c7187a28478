"""Load a verifier named in the config: a built-in name, the name of an entry point in the group
`rlstack.verifiers` of an installed distribution, `package.module:function` or
`path/to/file.py:function`.

A verifier is a callable `fn(prompt, response, reference, **extras) -> float`, higher is better
(checkers return 1.0 for correct and 0.0 for wrong); `rlstack.verifiers.api` describes the whole
contract (details, async and batched verifiers). A distribution publishes verifiers with

    [project.entry-points."rlstack.verifiers"]
    my_checker = "my_package.checks:my_checker"

and a config then names it `my_checker`. A built-in name wins over an entry point of that name.

A file is imported under a module name derived from its absolute path
(`_rlstack_verifier_<stem>_<hash>`), registered in `sys.modules`; its directory is on `sys.path`
only while the file runs, so the file can import a sibling module at its top level but not later,
from inside a function. Such a function pickles by reference to that module name: to use it in
another process, send the spec string and call `load_verifier` there.
"""

import difflib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from rlstack.errors import ConfigError, PluginError
from rlstack.verifiers.exact import exact_match
from rlstack.verifiers.format import think_answer
from rlstack.verifiers.json_schema import json_schema
from rlstack.verifiers.numeric import numeric_match
from rlstack.verifiers.python_tests import python_tests
from rlstack.verifiers.regex import regex_match

Verifier = Callable[..., float]

NEAR_MISS = 0.8  # difflib similarity above which an option taken by **extras is a misspelling

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
        entry_point = entry_points().get(spec)
        if entry_point is not None:
            return _load_entry_point(entry_point)
        installed = ", ".join(entry_points()) or "none installed"
        hint = did_you_mean(spec, [*BUILTIN_VERIFIERS, *entry_points()])
        raise PluginError(
            f"{hint}expected 'package.module:function', 'path/to/file.py:function', a built-in "
            f"name ({', '.join(BUILTIN_VERIFIERS)}) or an entry-point name ({installed})"
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


def did_you_mean(name: str, known: list[str]) -> str:
    """`"did you mean 'numeric'? "` for the known name closest to a misspelt one, else ""."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def load_verifier(spec: str) -> Verifier:
    """Find the verifier a config names.

    Args:
        spec: A built-in name from `BUILTIN_VERIFIERS` ("numeric" and its alias "gsm8k",
            "exact_match", ...), the name of an entry point in the group `rlstack.verifiers`,
            `package.module:function`, or `path/to/file.py:function` (a relative path is taken
            from the current directory). The function part may be dotted (`Class.method`).

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


ENTRY_POINT_GROUP = "rlstack.verifiers"


def entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """Verifiers that installed distributions publish, by name (the first one found wins)."""
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)
    return found


def _load_entry_point(ep: importlib.metadata.EntryPoint) -> Verifier:
    dist = getattr(ep.dist, "name", None) or "an installed distribution"
    try:
        target = ep.load()
    except (Exception, SystemExit) as exc:
        raise PluginError(
            f"entry point {ep.name} = {ep.value} of {dist} does not load ({_describe(exc)})"
        ) from exc
    if not callable(target):
        raise PluginError(f"entry point {ep.name} = {ep.value} of {dist} is not callable")
    return target


def available_verifiers() -> list[tuple[str, str, str]]:
    """Every verifier that can be named without a module path.

    Returns:
        `(name, origin, description)` per verifier: built-ins first (origin "built-in"), then
        entry points (origin "entry point <value> (<distribution>)"); the description is the
        first line of the function's docstring, or why it does not load.
    """
    out = [(name, "built-in", _summary(fn)) for name, fn in BUILTIN_VERIFIERS.items()]
    for name, ep in sorted(entry_points().items()):
        dist = getattr(ep.dist, "name", None) or "?"
        origin = f"entry point {ep.value} ({dist})"
        if name in BUILTIN_VERIFIERS:
            out.append((name, origin, "shadowed by the built-in of the same name"))
            continue
        try:
            description = _summary(_load_entry_point(ep))
        except PluginError as exc:
            description = f"does not load: {exc}"
        out.append((name, origin, description))
    return out


def _summary(fn: Any) -> str:
    doc = inspect.getdoc(fn) or ""
    return doc.strip().splitlines()[0] if doc.strip() else "(no description)"


def check_options(fn: Verifier, options: dict[str, Any], spec: str) -> None:
    """Fail when a verifier cannot take the options a config binds to it.

    An option the verifier does not name is refused; with `**extras` (where such an option
    would go), only when it is missing a parameter it requires, or when the name is a near miss
    of one of its parameters (`max_char` for `max_chars`, silently left at its default).

    Raises:
        PluginError: naming the verifier and the option, e.g. "verifier 'regex': no option
            patern; did you mean 'pattern'? (options: pattern, ...)".
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # some builtins and C functions have no signature to check
    named = _option_names(signature)
    unnamed = [] if named is None else sorted(set(options) - set(named))
    extras = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    builtin = any(fn is verifier for verifier in BUILTIN_VERIFIERS.values())
    try:
        signature.bind("prompt", "response", "reference", **options)
    except TypeError as exc:
        unknown = unnamed
        if extras:  # the error is about a parameter left out: an option that looks like it
            missing = [
                p.name
                for p in signature.parameters.values()
                if p.name in named and p.default is p.empty and p.name not in options
            ]
            unknown = [o for o in unnamed if difflib.get_close_matches(o, missing)]
        if unknown:
            raise PluginError(_no_option(spec, unknown, named)) from None
        what = f" and the options {', '.join(sorted(options))}" if options else ""
        raise PluginError(
            f"verifier {spec!r}: cannot be called with (prompt, response, reference){what} ({exc})"
        ) from None
    near = [o for o in unnamed if difflib.get_close_matches(o, named, cutoff=NEAR_MISS)]
    if near and not builtin:
        note = "; other names reach **extras"
        raise PluginError(_no_option(spec, near, named, note))
    if options and builtin:
        # Built-ins take data columns as **extras, so a misspelt option would pass unnoticed:
        # their options are exactly their keyword-only parameters. A trial call on empty
        # strings then checks the values (a bad pattern, an unknown mode).
        known = [p.name for p in signature.parameters.values() if p.kind is p.KEYWORD_ONLY]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise PluginError(_no_option(spec, unknown, known))
        try:
            fn("", "", "", **options)
        except (PluginError, ConfigError) as exc:
            raise PluginError(f"verifier {spec!r}: {exc}") from None
        except Exception:
            pass  # empty strings are not a real sample; only option errors matter here


def _option_names(signature: inspect.Signature) -> list[str] | None:
    """The parameters a verifier takes by name after prompt, response and reference; None when
    those three do not bind (the signature is wrong, not an option)."""
    try:
        taken = signature.bind_partial("prompt", "response", "reference").arguments
    except TypeError:
        return None
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [
        p.name for p in signature.parameters.values() if p.kind in keyword and p.name not in taken
    ]


def _no_option(spec: str, unknown: list[str], known: list[str], note: str = "") -> str:
    """`verifier 'f.py:fn': no option max_char; did you mean 'max_chars'? (options: ...)`."""
    hint = did_you_mean(unknown[0], known).rstrip() if len(unknown) == 1 else ""
    return (
        f"verifier {spec!r}: no option {', '.join(unknown)}{'; ' + hint if hint else ''} "
        f"(options: {', '.join(known) or 'none'}{note})"
    )
