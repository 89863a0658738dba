"""Errors a user can act on. The CLI prints their message (no traceback) and exits with status 2."""


class MsencError(Exception):
    """Base class: something about the input, config or environment that the user must fix."""


class ConfigError(MsencError, ValueError):
    """A configuration value is missing or invalid; the message names the source and the field."""


class InputDataError(MsencError, ValueError):
    """Input data cannot be used; the message names the file, cell/row and field."""


class StorageError(MsencError, OSError):
    """A URI cannot be read or written (missing object, existing output, bad credentials...)."""
