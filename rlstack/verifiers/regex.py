"""Regular-expression verifier: the response matches a pattern."""

import functools
import re

from rlstack.errors import DataError, PluginError

_MODES = ("search", "match", "fullmatch")
_FLAG_LETTERS = {"a": re.ASCII, "i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.X}


def _parse_flags(flags: str | list[str]) -> int:
    """`"is"` or `["IGNORECASE", "DOTALL"]` as an `re` flag value."""
    names = list(flags) if isinstance(flags, str) else flags
    if not isinstance(names, list):
        raise PluginError(f"regex: flags must be letters or a list of names, got {flags!r}")
    value = 0
    for name in names:
        flag = (
            _FLAG_LETTERS.get(name.lower()) if len(name) == 1 else getattr(re, name.upper(), None)
        )
        if not isinstance(flag, re.RegexFlag):
            raise PluginError(
                f"regex: unknown flag {name!r} (letters {''.join(_FLAG_LETTERS)} or names such "
                "as IGNORECASE, MULTILINE, DOTALL)"
            )
        value |= flag
    return value


@functools.lru_cache(maxsize=1024)
def _compile(pattern: str, flags: int) -> re.Pattern:
    return re.compile(pattern, flags)


def regex_match(
    prompt: str,
    response: str,
    reference: str,
    *,
    pattern: str | None = None,
    mode: str = "search",
    flags: str | list[str] = "",
    strip: bool = True,
    **extras: object,
) -> float:
    """Verifier: 1.0 when the response matches a regular expression, else 0.0.

    Args:
        prompt: The prompt (unused).
        response: The model's response.
        reference: The pattern when `pattern` is not given (one pattern per data row).
        pattern: The pattern (Python `re` syntax) for every sample.
        mode: `search` (anywhere in the response), `match` (at its start) or `fullmatch` (the
            whole response).
        flags: `re` flags as letters (`"is"`: IGNORECASE, DOTALL; also a, m, x) or a list of
            names (`["IGNORECASE", "MULTILINE"]`).
        strip: Strip outer whitespace from the response first.
        **extras: Other fields of the data row (unused).

    Returns:
        1.0 or 0.0; 0.0 also when the response is not a string.

    Raises:
        PluginError: An invalid `pattern`, `mode` or `flags` option.
        DataError: The pattern comes from the reference and is missing or invalid.
    """
    if mode not in _MODES:
        raise PluginError(f"regex: mode must be one of {', '.join(_MODES)}, got {mode!r}")
    error = PluginError if pattern is not None else DataError
    source = pattern if pattern is not None else reference
    if not isinstance(source, str):
        raise error(f"regex: expected a pattern string, got {type(source).__name__}")
    try:
        compiled = _compile(source, _parse_flags(flags))
    except re.error as exc:
        raise error(f"regex: invalid pattern {source!r} ({exc})") from exc

    if not isinstance(response, str):
        return 0.0
    text = response.strip() if strip else response
    return 1.0 if getattr(compiled, mode)(text) is not None else 0.0
