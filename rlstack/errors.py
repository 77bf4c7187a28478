"""User-facing errors.

Every problem caused by user input (a config key, a data file or row, a plug-in) is raised as a
subclass of `RLStackError`. The command line prints its message on one line and exits with a
nonzero status, without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import re

ANSI_CODE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal colour codes in quoted messages


class RLStackError(Exception):
    """An error the user can fix; its message names the place (file, line, key)."""


class ConfigError(RLStackError):
    """A config key is unknown, mistyped or has an invalid value."""


class DataError(RLStackError):
    """A data file is missing or unreadable, or a row is malformed."""


class PluginError(RLStackError):
    """A verifier or other plug-in named in the config cannot be loaded or called."""


def one_line(error: BaseException) -> str:
    """An exception as `Type: message` on a single line (for messages that quote a library's),
    without terminal colour codes (Ray colours the actor names in its errors)."""
    message = " ".join(ANSI_CODE.sub("", str(error)).split())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def user_error(err: BaseException | None) -> RLStackError | None:
    """The RLStackError behind `err`, also when it was raised inside a Ray actor (Ray wraps it;
    the original is its `cause`), or None when there is none."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, RLStackError):
            return err
        cause = getattr(err, "cause", None)
        err = cause if isinstance(cause, BaseException) else err.__cause__
    return None
