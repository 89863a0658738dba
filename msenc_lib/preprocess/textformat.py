"""Fast, exact formatting of table rows into the original text form.

The original formats every value in Python: floats as ``str(round(x, precision))``, integers as
``str(x)``, nulls as the unk token, and joins a row's values with the value separator and rows with the
time separator. Doing that per value costs ~0.5 µs; here whole columns are formatted with numpy and the
result is byte-for-byte the same:

* ``round(x, p)`` is the double nearest to ``D / 10**p`` where ``D`` is ``|x| * 10**p`` rounded half-even
  on the EXACT binary value. ``D`` is computed exactly with an error-free product (Dekker's split: the
  product ``|x| * 10**p`` is ``t + e`` exactly, so the position against the half is decided on ``t - floor(t)
  - 0.5 + e``, whose sign floating point gets right). When ``D < 10**15`` (at most 15 significant digits),
  the shortest repr of that double is the decimal ``D / 10**p`` itself, so its digits are those of ``D``
  (trailing fraction zeros dropped, at least one kept, a ``-`` for negative values including ``-0.0``).
* Values outside that range (``|x|`` too large, ``nan``/``inf``, values Python prints in exponent form)
  are formatted by Python itself (``nan``/``inf`` without a Python call), so every value is exact.

A column becomes a block of fixed-width character slots (a padding code where a character is absent); the
blocks of a chunk of rows and the separators form a matrix whose non-padding codes, read row by row, are
the text. What is written for each character is an :class:`Alphabet`: :data:`TEXT` writes the bytes
themselves, with the time separator and the unk token as one placeholder byte each (:func:`to_text` puts
the strings in); the built-in tokenizer's alphabet writes its token ids, so no tokenizer call is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa

# Placeholder bytes of the text alphabet (never part of the text): padding, time separator, unknown.
PAD_BYTE, SEP_BYTE, UNK_BYTE = 0, 1, 2
FAST_MAX_PRECISION = 15
_D_LIMIT = 1e15  # |D| below this: at most 15 significant digits -> repr is the decimal D/10**p
DEFAULT_CHUNK_ROWS = 1 << 14


class UnformattableValue(ValueError):
    """A value has a character the alphabet cannot represent (``column`` names the column when known)."""

    def __init__(self, message: str, column: str | None = None, example: str | None = None):
        super().__init__(message)
        self.column = column
        self.example = example


INVALID = 255


@dataclass(frozen=True)
class Alphabet:
    """What the formatter writes for each character: ``table[byte]`` (``INVALID`` = not representable),
    plus the codes of the padding (absent character), the time separator and the unk token.

    :data:`TEXT` writes the characters themselves (placeholder bytes for pad/sep/unk); an alphabet of
    token ids (:func:`token_alphabet`) writes token ids of a one-token-per-character tokenizer directly.
    Digit codes must be consecutive."""

    table: np.ndarray
    pad: int
    sep: int
    unk: int

    def code(self, char: str) -> int:
        c = int(self.table[ord(char)])
        if c == INVALID:
            raise UnformattableValue(f"character {char!r} cannot be represented")
        return c

    def codes(self, word: bytes) -> np.ndarray:
        out = self.table[np.frombuffer(word, dtype=np.uint8)]
        if (out == INVALID).any():
            raise UnformattableValue(f"{word.decode(errors='replace')!r} cannot be represented",
                                     example=word.decode(errors="replace"))
        return out

    def to_text_bytes(self) -> np.ndarray:
        """code -> text byte (placeholders for sep/unk/pad), for turning codes back into text."""
        inv = np.full(256, INVALID, dtype=np.uint8)
        for b in range(256):
            c = int(self.table[b])
            if c != INVALID:
                inv[c] = b
        inv[self.pad], inv[self.sep], inv[self.unk] = PAD_BYTE, SEP_BYTE, UNK_BYTE
        return inv


def _text_table() -> np.ndarray:
    t = np.arange(256, dtype=np.uint8)
    t[[PAD_BYTE, SEP_BYTE, UNK_BYTE]] = INVALID
    return t


TEXT = Alphabet(_text_table(), PAD_BYTE, SEP_BYTE, UNK_BYTE)


def token_alphabet(char_ids: dict[str, int], pad: int, sep: int, unk: int) -> Alphabet:
    """Alphabet writing token ids (< 255) of single-character tokens; ``pad`` must be an id no character
    maps to (e.g. the pad token's)."""
    table = np.full(256, INVALID, dtype=np.uint8)
    for ch, i in char_ids.items():
        if len(ch) == 1 and ord(ch) < 256 and 0 <= i < INVALID:
            table[ord(ch)] = i
    if pad in set(int(v) for v in table if v != INVALID):
        raise ValueError("the pad code is used by a character")
    digits = [int(table[ord(d)]) for d in "0123456789"]
    if digits != list(range(digits[0], digits[0] + 10)):
        raise ValueError("digit codes must be consecutive")
    return Alphabet(table, pad, sep, unk)


# --------------------------------------------------------------------------------------- Python reference
def format_value(value, precision: int = 4, unk: str = "<|UNK|>") -> str:
    """The original's per-value rule (reference for tests and the slow path)."""
    if value is None:
        return unk
    if isinstance(value, float):
        return str(round(value, precision))
    return str(value)


# ------------------------------------------------------------------------------------------ exact rounding
def rounded_abs(a: np.ndarray, precision: int) -> np.ndarray:
    """``D = round_half_even(a * 10**precision)`` on the exact binary value of each ``a >= 0`` (float64).

    Exact for ``a * 10**precision < 2**50``; callers treat larger ``D`` as out of the fast range.
    """
    scale = float(10 ** precision)
    with np.errstate(over="ignore", invalid="ignore"):
        t = a * scale
        c = 134217729.0 * a  # Dekker split of a (2**27 + 1)
        a_hi = c - (c - a)
        a_lo = a - a_hi
        cs = 134217729.0 * scale
        s_hi = cs - (cs - scale)
        s_lo = scale - s_hi
        err = ((a_hi * s_hi - t) + a_hi * s_lo + a_lo * s_hi) + a_lo * s_lo  # a*scale == t + err exactly
        fl = np.floor(t)
        g = ((t - fl) - 0.5) + err  # sign of (exact fraction - 1/2)
        half = fl * 0.5
        odd = half != np.floor(half)
        return fl + ((g > 0) | ((g == 0) & odd))


# ----------------------------------------------------------------------------------------- digit tables
_TABLES: dict[tuple[int, int], tuple[np.ndarray, dict[int, np.ndarray]]] = {}
_GROUP = 10_000  # integers are written 4 digits at a time


def _tables(zero: int, pad: int) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Code tables for digit code ``zero`` (0..9 consecutive) and padding ``pad``, each entry 4 codes packed in
    one uint32 (read with :func:`_rows4`):

    * integer groups ``(3 * 10**4,)``: ``v`` right-aligned without leading zeros (``0`` -> ``"0"``), then
      ``v`` zero-padded to 4 digits, then all padding;
    * fractions ``{p: (10**p,)}`` for p = 1..4: the p digits of ``f`` without trailing zeros (one kept), then
      padding up to 4 codes.
    """
    key = (zero, pad)
    got = _TABLES.get(key)
    if got is None:
        v = np.arange(_GROUP)
        digits = np.stack([(v // 10 ** (3 - j)) % 10 for j in range(4)], axis=1)
        padded = (digits + zero).astype(np.uint8)
        unpadded = padded.copy()
        for j in range(3):
            unpadded[:, j] = np.where(v >= 10 ** (3 - j), padded[:, j], pad)
        ints = np.concatenate([unpadded, padded, np.full((_GROUP, 4), pad, np.uint8)])
        fracs = {}
        for p in range(1, 5):
            f = np.arange(10 ** p)
            d = np.stack([(f // 10 ** (p - 1 - j)) % 10 for j in range(p)], axis=1)
            kept = np.cumsum((d != 0)[:, ::-1], axis=1)[:, ::-1] > 0
            kept[:, 0] = True
            codes = np.full((10 ** p, 4), pad, np.uint8)
            codes[:, :p] = np.where(kept, d + zero, pad)
            fracs[p] = _packed(codes)
        got = (_packed(ints), fracs)
        _TABLES[key] = got
    return got


def _packed(codes: np.ndarray) -> np.ndarray:
    """``(n, 4)`` uint8 codes as ``(n,)`` uint32, one entry per row."""
    return np.ascontiguousarray(codes, dtype=np.uint8).view(np.uint32).reshape(len(codes))


def _rows4(table: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``(len(index), 4)`` codes of a packed table: one 4-byte gather per row (about 3x faster than
    gathering rows of an ``(n, 4)`` uint8 table)."""
    return table.take(index).view(np.uint8).reshape(len(index), 4)


def _int_codes(value: np.ndarray, k: int, ints: np.ndarray) -> np.ndarray:
    """``(n, k)`` codes of ``value >= 0`` right-aligned in ``k`` slots, leading slots padding."""
    if k <= 4:  # value < 10**k: one group, no leading-zero groups
        return _rows4(ints, value)[:, 4 - k:]
    if k > 8:
        value = value.astype(np.int64, copy=False)
    out = np.empty((len(value), k), dtype=np.uint8)
    for g in range(-(-k // 4)):
        low = 10 ** (4 * g)
        part = (value // low) % _GROUP if g else value % _GROUP
        if g == 0:
            mode = (value >= _GROUP).astype(np.intp)
        else:
            mode = np.where(value >= low * _GROUP, 1, np.where(value >= low, 0, 2))
        codes = _rows4(ints, part + mode * _GROUP)
        right = k - 4 * g
        left = max(0, right - 4)
        out[:, left:right] = codes[:, 4 - (right - left):]
    return out


def _int_type_for(max_value: int):
    return np.int32 if max_value < (1 << 31) else np.int64


# ------------------------------------------------------------------------------------- prepared columns
# A prepared column chunk is (width, write): ``write(dest)`` fills the ``(rows, width)`` view ``dest``.
Prepared = tuple


def _word(codes: np.ndarray) -> Prepared:
    """Every row holds the same text (constant columns: no per-value work)."""
    def write(dest: np.ndarray) -> None:
        dest[:] = codes
    return len(codes), write


def _overwrite_rows(dest: np.ndarray, mask: np.ndarray, codes: np.ndarray, pad: int) -> None:
    if mask.any():
        dest[mask] = pad
        dest[mask, : len(codes)] = codes


def _prep_float(x: np.ndarray, valid: np.ndarray | None, precision: int, ab: Alphabet) -> Prepared:
    n = len(x)
    pad, zero = ab.pad, ab.code("0")
    if valid is None and n:
        bits = x.view(np.int64)
        if bits.min() == bits.max():
            return _word(ab.codes(format_value(float(x[0]), precision).encode()))
    finite = np.isfinite(x)
    if valid is not None:
        finite &= valid
    if 0 <= precision <= FAST_MAX_PRECISION:
        d = rounded_abs(np.abs(np.where(finite, x, 0.0)), precision)
        fast = finite & (d < _D_LIMIT)
        if precision > 4:  # repr switches to exponent form below 1e-4
            fast &= (d == 0) | (d >= 10.0 ** (precision - 4))
        d = np.where(fast, d, 0.0)
    else:
        fast = np.zeros(n, dtype=bool)
        d = np.zeros(n)
    scale = 10 ** precision if 0 <= precision <= FAST_MAX_PRECISION else 1
    dmax = int(d.max()) if n else 0
    itype = _int_type_for(max(dmax, scale))
    di = d.astype(itype)
    ipart = di // itype(scale)
    frac = di - ipart * itype(scale)
    imax = int(ipart.max()) if n else 0
    k = max(1, len(str(imax)))
    negative = np.signbit(x)
    sign = 1 if negative.any() else 0  # a sign slot only where some value needs one: fewer codes to compact
    base = sign + k + 1 + max(precision, 1)

    slow = ~fast if valid is None else ~fast & valid
    specials = []
    if slow.any():
        for mask, word in ((np.isnan(x) & slow, b"nan"), (np.isposinf(x) & slow, b"inf"),
                           (np.isneginf(x) & slow, b"-inf")):
            if mask.any():
                specials.append((mask, ab.codes(word)))
        other = slow & ~np.isnan(x) & ~np.isinf(x)
        other_rows = np.flatnonzero(other)
    else:
        other_rows = np.zeros(0, np.intp)
    other_words = [ab.codes(str(round(v, precision)).encode()) for v in x[other_rows].tolist()]
    width = max([base, *(len(c) for _, c in specials), *(len(w) for w in other_words)])
    ints, fracs = _tables(zero, pad)

    def write(dest: np.ndarray) -> None:
        if sign:
            dest[:, 0] = np.where(negative, ab.code("-"), pad)
        dest[:, sign: sign + k] = _int_codes(ipart, k, ints)
        dest[:, sign + k] = ab.code(".")
        if precision <= 0:
            dest[:, sign + 1 + k] = zero
        elif precision <= 4:
            dest[:, sign + 1 + k: sign + 1 + k + precision] = _rows4(fracs[precision], frac)[:, :precision]
        else:
            r = frac.copy()
            seen = np.zeros(n, dtype=bool)
            for j in range(precision - 1, -1, -1):  # drop trailing zeros, keep one digit
                dgt = r % 10
                r //= 10
                seen |= dgt != 0
                dest[:, sign + 1 + k + j] = dgt + zero if j == 0 else np.where(seen, dgt + zero, pad)
        if width > base:
            dest[:, base:] = pad
        for mask, codes in specials:
            _overwrite_rows(dest, mask, codes, pad)
        for r_, w in zip(other_rows.tolist(), other_words):
            dest[r_] = pad
            dest[r_, : len(w)] = w
        if valid is not None:
            _overwrite_rows(dest, ~valid, np.array([ab.unk], np.uint8), pad)

    return width, write


def _prep_int(values: np.ndarray, valid: np.ndarray | None, ab: Alphabet) -> Prepared:
    n = len(values)
    if valid is None and n and values.min() == values.max():
        return _word(ab.codes(str(int(values[0])).encode()))
    if values.dtype == np.uint64 and n and int(values.max()) > np.iinfo(np.int64).max:
        return _prep_words([str(int(v)).encode() for v in values.tolist()], valid, ab)
    v = values.astype(np.int64, copy=False)
    with np.errstate(over="ignore"):
        a = np.abs(v)
    if n and a.min() < 0:  # the int64 minimum has no positive counterpart
        return _prep_words([str(int(x)).encode() for x in v.tolist()], valid, ab)
    amax = int(a.max()) if n else 0
    a = a.astype(_int_type_for(amax), copy=False)
    k = max(1, len(str(amax)))
    ints, _ = _tables(ab.code("0"), ab.pad)

    negative = v < 0
    sign = 1 if negative.any() else 0

    def write(dest: np.ndarray) -> None:
        if sign:
            dest[:, 0] = np.where(negative, ab.code("-"), ab.pad)
        dest[:, sign:] = _int_codes(a, k, ints)
        if valid is not None:
            _overwrite_rows(dest, ~valid, np.array([ab.unk], np.uint8), ab.pad)

    return k + sign, write


def _prep_words(words: list[bytes | None], valid: np.ndarray | None, ab: Alphabet) -> Prepared:
    arr = pa.array([w if (valid is None or valid[i]) else None for i, w in enumerate(words)], pa.binary())
    return _prep_binary(arr, ab)


def _prep_binary(arr: pa.Array, ab: Alphabet) -> Prepared:
    """Left-aligned bytes of a string/binary array (nulls -> unk)."""
    n = len(arr)
    if pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type):
        arr = arr.cast(pa.large_binary())
        off_type = np.int64
    else:
        arr = arr.cast(pa.binary())
        off_type = np.int32
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=off_type)[arr.offset: arr.offset + n + 1].astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    starts = offsets[:-1]
    lengths = offsets[1:] - starts
    valid = _valid_mask(arr)
    mapped = ab.table[data] if data.size else data
    if data.size:
        bad = np.flatnonzero(mapped[offsets[0]: offsets[-1]] == INVALID) + offsets[0]
        if bad.size:
            row = int(np.searchsorted(offsets, bad[0], side="right") - 1)
            if valid is None or valid[row]:
                example = arr[row].as_py()
                example = example.decode(errors="replace") if isinstance(example, bytes) else str(example)
                raise UnformattableValue(f"value {example!r} has a character that cannot be represented",
                                         example=example)
    width = max(1, int(lengths.max()) if n else 1)

    def write(dest: np.ndarray) -> None:
        dest[:] = ab.pad
        for j in range(width):
            has = lengths > j
            if valid is not None:
                has &= valid
            dest[has, j] = mapped[starts[has] + j]
        if valid is not None:
            _overwrite_rows(dest, ~valid, np.array([ab.unk], np.uint8), ab.pad)

    return width, write


def _valid_mask(arr: pa.Array) -> np.ndarray | None:
    if arr.null_count == 0:
        return None
    return np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)


def prepare_column(arr: pa.Array | pa.ChunkedArray, precision: int, ab: Alphabet = TEXT) -> Prepared:
    """``(width, write)`` for one column chunk: ``write(dest)`` fills a ``(len(arr), width)`` uint8 view."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.cast(t.value_type)
        t = arr.type
    n = len(arr)
    if pa.types.is_null(t) or arr.null_count == n:
        return _word(np.array([ab.unk], np.uint8))
    valid = _valid_mask(arr)
    if pa.types.is_floating(t):
        values = arr.cast(pa.float64())
        values = values.fill_null(0.0).to_numpy() if valid is not None else values.to_numpy(zero_copy_only=False)
        return _prep_float(values, valid, precision, ab)
    if pa.types.is_integer(t):
        values = arr.fill_null(0).to_numpy() if valid is not None else arr.to_numpy(zero_copy_only=False)
        return _prep_int(values, valid, ab)
    if pa.types.is_boolean(t):
        truth = arr.fill_null(False).to_pylist()
        return _prep_words([b"True" if v else b"False" for v in truth], valid, ab)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or \
            pa.types.is_large_binary(t):
        return _prep_binary(arr, ab)
    if pa.types.is_string_view(t) or pa.types.is_binary_view(t):
        return _prep_binary(arr.cast(pa.large_binary()), ab)
    # Anything else (dates, decimals, ...): Python's str() of the value, like the original.
    return _prep_words([None if v is None else str(v).encode() for v in arr.to_pylist()], None, ab)


# ------------------------------------------------------------------------------------------------- rows
def format_rows(columns: Sequence[pa.Array | pa.ChunkedArray], precision: int, value_sep: bytes = b",",
                sep_after: np.ndarray | None = None, ab: Alphabet = TEXT, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                want_lengths: bool = False, names: Sequence[str] | None = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """Format rows (in the given order) as ``v1<value_sep>v2...`` and put the separator code after row ``i``
    where ``sep_after[i]``. Returns the codes (uint8) and, if asked, the number of codes of each row
    (separator included). :class:`UnformattableValue` names the column when ``names`` are given."""
    if not columns:
        raise ValueError("no columns to format")
    n = len(columns[0])
    vsep = ab.codes(value_sep) if value_sep else np.zeros(0, np.uint8)
    cols = [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in columns]
    pieces: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    for start in range(0, n, chunk_rows):
        m = min(chunk_rows, n - start)
        prepared = []
        for i, c in enumerate(cols):
            try:
                prepared.append(prepare_column(c.slice(start, m), precision, ab))
            except UnformattableValue as e:
                name = names[i] if names else None
                raise UnformattableValue(f"column {name!r}: {e}" if name else str(e), name, e.example) from None
        extra = 1 if sep_after is not None else 0
        width = sum(w for w, _ in prepared) + len(vsep) * (len(prepared) - 1) + extra
        rows = np.empty((m, width), dtype=np.uint8)
        o = 0
        for i, (w, write) in enumerate(prepared):
            write(rows[:, o: o + w])
            o += w
            if i < len(prepared) - 1 and len(vsep):
                rows[:, o: o + len(vsep)] = vsep
                o += len(vsep)
        if extra:
            rows[:, o] = np.where(sep_after[start: start + m], ab.sep, ab.pad)
        keep = rows != ab.pad
        pieces.append(rows[keep])
        if want_lengths:
            lengths.append(keep.sum(axis=1, dtype=np.int64))
    flat = np.concatenate(pieces) if len(pieces) != 1 else pieces[0]
    lens = (np.concatenate(lengths) if lengths else np.zeros(0, np.int64)) if want_lengths else None
    return flat, lens


def to_text(codes: np.ndarray | bytes, time_sep: str, unk: str, ab: Alphabet = TEXT) -> str:
    """The text of formatted codes: placeholders replaced by the separator and unk strings."""
    if isinstance(codes, np.ndarray):
        raw = (codes if ab is TEXT else ab.to_text_bytes()[codes]).tobytes()
    else:
        raw = bytes(codes)
    raw = raw.replace(bytes([SEP_BYTE]), time_sep.encode()).replace(bytes([UNK_BYTE]), unk.encode())
    return raw.decode("utf-8")


__all__ = [
    "Alphabet", "TEXT", "token_alphabet", "format_value", "rounded_abs", "prepare_column", "format_rows", "to_text",
    "UnformattableValue", "FAST_MAX_PRECISION", "INVALID", "PAD_BYTE", "SEP_BYTE", "UNK_BYTE",
]
