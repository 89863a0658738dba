"""Errors a user can act on, and the exit status of each kind.

The CLI and the KFP components print an error's message (no traceback) and exit with its class's status, so
that whoever runs msenc can tell a fault that a retry may fix from one that needs a person:

====== ==================================================================================== ============
status meaning                                                                              retry helps
====== ==================================================================================== ============
0      success
1      an unexpected error (a bug: the traceback is printed)                                no
2      bad usage or configuration (a flag, a config field, an environment variable)        no
3      bad input data (the message names the file, row and field)                           no
4      the environment needs fixing: credentials, permissions, a missing bucket, a          no
       read-only location, an existing output, an output another run is writing
138    a temporary environment fault: object storage unreachable or throttled after        yes
       bounded retries, a server error; rerunning later completes
130    interrupted (Ctrl-C)
====== ==================================================================================== ============

138 is 128 + SIGUSR1, the exit code the Kubeflow Training Operator reserves for user-defined retryable errors
(its ``ExitCode`` restart policy restarts 130, 137, 138 and 143 and treats 1-127 as permanent).
"""

from __future__ import annotations

import errno

EXIT_INTERNAL = 1
EXIT_CONFIG = 2
EXIT_INPUT = 3
EXIT_ENVIRONMENT = 4
EXIT_TRANSIENT = 138
EXIT_INTERRUPTED = 130


class MsencError(Exception):
    """Base class: something about the input, config or environment that the user must fix."""

    exit_code = EXIT_CONFIG

    def __init__(self, *args, exit_code: int | None = None):
        super().__init__(*args)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def retryable(self) -> bool:
        return self.exit_code == EXIT_TRANSIENT


class ConfigError(MsencError, ValueError):
    """A configuration value is missing or invalid; the message names the source and the field."""

    exit_code = EXIT_CONFIG


class InputDataError(MsencError, ValueError):
    """Input data cannot be used; the message names the file, cell/row and field."""

    exit_code = EXIT_INPUT


class StorageError(MsencError, OSError):
    """A URI cannot be read or written (bad credentials, access denied, missing bucket, read-only location...);
    the message names the URI and what to do."""

    exit_code = EXIT_ENVIRONMENT


class OutputExistsError(StorageError):
    """The output location already holds an output (or another run is writing it)."""


class IncompleteOutputError(StorageError):
    """An input is the unfinished output of a run that was interrupted (or is still writing it)."""


class TransientStorageError(StorageError):
    """Object storage is unreachable, throttling or failing after bounded retries: rerunning later may work."""

    exit_code = EXIT_TRANSIENT


# OSErrors that are the environment's, not the input's: the location cannot be written or the disk is full.
_ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def describe(error: BaseException) -> tuple[int, str] | None:
    """(exit status, one-line message) for an error a user can act on; ``None`` for a bug (show the traceback).

    msenc's own errors carry their status; an ``OSError`` about a location that cannot be written or a full
    disk is an environment fault; a missing file is bad input; an object-storage error that escaped the
    storage layer is classified like the storage layer's own.
    """
    if isinstance(error, MsencError):
        return error.exit_code, str(error)
    from msenc_lib.storage import classify_s3_error

    mapped = classify_s3_error(error, "", "access object storage")
    if mapped is not None:
        return mapped.exit_code, str(mapped)
    if isinstance(error, FileNotFoundError):
        where = error.filename or (error.args[0] if error.args else "")
        return EXIT_INPUT, f"not found: {where}"
    if isinstance(error, OSError) and error.errno in _ENVIRONMENT_ERRNOS:
        where = f": {error.filename}" if error.filename else ""
        hint = ("free some space or choose another location" if error.errno in (errno.ENOSPC, errno.EDQUOT)
                else "choose another location or fix its permissions")
        return EXIT_ENVIRONMENT, f"{error.strerror or error}{where} ({hint})"
    if isinstance(error, MemoryError):
        return EXIT_ENVIRONMENT, "out of memory (give the process more memory, or lower the batch or data size)"
    return None


def report(error: BaseException, command: str) -> int | None:
    """Print ``msenc <command>: error: <message>`` to stderr for an error a user can act on and return its exit
    status; ``None`` for a bug (the caller lets the traceback show). The traceback of a known error is logged
    at DEBUG."""
    import logging
    import sys

    known = describe(error)
    if known is None:
        return None
    code, message = known
    logging.getLogger("msenc").debug("error details", exc_info=error)
    print(f"msenc {command}: error: {message}", file=sys.stderr, flush=True)
    return code
