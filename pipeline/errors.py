"""Typed errors whose message tells the user what to do next.

The CLI turns these into a one-line message and a distinct exit code; stages raise them
instead of printing.
"""


class JourneymapError(Exception):
    """Base class: a problem the user can fix. `str(err)` is the one-line message."""

    exit_code = 2


class UsageError(JourneymapError):
    """The command line asks for something impossible (missing file, unknown format)."""

    exit_code = 2


class ConfigError(JourneymapError):
    """The configuration file is unreadable or has an unknown key or a bad value."""

    exit_code = 2


class StoreError(JourneymapError):
    """The database cannot be opened or written."""

    exit_code = 3


class InputRejectedError(JourneymapError):
    """Too much of the input was quarantined: the run published nothing but its record."""

    exit_code = 5


class SqlError(UsageError):
    """DuckDB refused a statement of `journeymap sql`.

    `kind` says why, so the caller can add a hint: "syntax", "catalog", "binder",
    "read_only" or "other"; `missing` names the table a catalog error did not find.
    """

    def __init__(self, message: str, kind: str = "other", missing: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.missing = missing
