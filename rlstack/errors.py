"""User-facing errors.

Every problem caused by user input (a config key, a data file or row, a plug-in) is raised as a
subclass of `RLStackError`. The command line prints its message on one line and exits with a
nonzero status, without a traceback; anything else is a bug and keeps its traceback.
"""


class RLStackError(Exception):
    """An error the user can fix; its message names the place (file, line, key)."""


class ConfigError(RLStackError):
    """A config key is unknown, mistyped or has an invalid value."""


class DataError(RLStackError):
    """A data file is missing or unreadable, or a row is malformed."""


class PluginError(RLStackError):
    """A verifier or other plug-in named in the config cannot be loaded or called."""
