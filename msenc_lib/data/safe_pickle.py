"""Loading pickles without running code from them: plain containers and numpy arrays only.

``pickle.load`` calls whatever callable a file names. The data pickles msenc reads (BatteryML's and BatteryLife's
processed cells, the Severson notebooks' batch pickles) hold only dicts, lists, tuples, strings, numbers,
``None`` and numpy arrays/scalars, so :class:`SafeUnpickler` resolves exactly the globals those need (both the
numpy 1 ``numpy.core.*`` and the numpy 2 ``numpy._core.*`` spellings, mapped to the installed numpy) and refuses
every other one with an error naming it. Nothing in the file is imported or executed.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
from typing import Any

import numpy as np

from msenc_lib.errors import InputDataError


def _numpy_module(name: str):
    """``numpy._core.<name>`` (numpy 2) or ``numpy.core.<name>`` (numpy 1), whichever this numpy has."""
    try:
        return importlib.import_module(f"numpy._core.{name}")
    except ImportError:  # numpy 1.x
        return importlib.import_module(f"numpy.core.{name}")


def _allowed() -> dict[tuple[str, str], Any]:
    import codecs

    multiarray, numeric = _numpy_module("multiarray"), _numpy_module("numeric")
    out: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for prefix in ("numpy.core", "numpy._core"):
        out[(f"{prefix}.multiarray", "_reconstruct")] = multiarray._reconstruct
        out[(f"{prefix}.multiarray", "scalar")] = multiarray.scalar
        out[(f"{prefix}.numeric", "_frombuffer")] = numeric._frombuffer
    # protocol 2 writes bytes as _codecs.encode(text, "latin1")
    out[("_codecs", "encode")] = codecs.encode
    out[("builtins", "bytes")] = out[("__builtin__", "bytes")] = bytes
    return out


_ALLOWED = _allowed()


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds plain containers and numpy arrays only (module doc)."""

    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise InputDataError(
                f"{self.source}: refused to unpickle: the file needs {module}.{name}, but only plain containers "
                "and numpy arrays are loaded (nothing in a data file is executed). Convert it to a supported "
                "format or re-save it as plain dicts/lists/numpy arrays") from None

    def persistent_load(self, pid: Any) -> Any:
        raise InputDataError(f"{self.source}: refused to unpickle: persistent ids are not supported")


def load(path: str | os.PathLike, source: str | None = None) -> Any:
    """The object pickled in ``path``, built without running code from it (module doc); errors name the file
    and what is wrong (not a pickle, truncated, a refused global)."""
    source = source or str(path)
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        data = fh.read(2)
        if not data:
            raise InputDataError(f"{source}: empty file, not a pickle")
        if data[:1] != b"\x80" and data[:1] not in (b"(", b"}", b"]", b"c"):
            raise InputDataError(f"{source}: not a pickle file (starts with {data!r})")
        fh.seek(0)
        unpickler = SafeUnpickler(io.BufferedReader(fh), source)
        try:
            return unpickler.load()
        except InputDataError:
            raise
        except EOFError:
            raise InputDataError(f"{source}: truncated pickle: the data ends early ({size} bytes); "
                                 "copy the file again") from None
        except (pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                MemoryError, OverflowError, UnicodeDecodeError) as e:
            truncated = "truncated" in str(e) or "ran out of input" in str(e).lower()
            what = "truncated pickle" if truncated else "damaged pickle"
            raise InputDataError(f"{source}: {what} ({type(e).__name__}: {e}; {size} bytes)") from None


__all__ = ["SafeUnpickler", "load"]
