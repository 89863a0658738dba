"""The vectorised formatter equals Python's str(round(x, p)) / str(int) for every value."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from msenc_lib.preprocess.textformat import TEXT, UnformattableValue, format_rows, format_value, rounded_abs, to_text
from msenc_lib.tokenizer import load_tokenizer


def _hard_floats(n: int, seed: int = 0) -> np.ndarray:
    """Values that stress the rounding: 5-decimal data (near halves at 4 decimals), k+0.5 over powers of ten,
    negative zero, tiny and huge magnitudes, integers as floats, raw random bit patterns, nan/inf."""
    rng = np.random.default_rng(seed)
    m = n // 9
    parts = [
        rng.normal(0, 3, m),
        np.round(rng.uniform(-10, 10, m), 5),
        (rng.integers(-10**9, 10**9, m) + 0.5) / 10.0 ** rng.integers(0, 9, m),
        rng.integers(-10**7, 10**7, m).astype(float),
        10.0 ** rng.uniform(-320, 30, m) * rng.choice([-1.0, 1.0], m),
        rng.integers(0, 2**53, m).astype(float) / 2.0 ** rng.integers(0, 70, m),
        rng.integers(0, 2**63 - 1, m, dtype=np.int64).view(np.float64),  # any bit pattern (nan/inf/subnormal)
        np.nextafter(np.round(rng.uniform(0, 100, m), 4) + 0.00005, np.inf * rng.choice([-1, 1], m)),
        np.array([0.0, -0.0, 0.5, 1.5, 2.5, 0.00005, -0.00005, 2.675, 1e15, 1e16, -1e-320, np.nan, np.inf,
                  -np.inf, 123456789012.5, 0.49999999999999994] * (m // 16 + 1))[:m],
    ]
    return np.concatenate(parts)


@pytest.mark.parametrize("precision", [0, 1, 2, 3, 4, 5, 6, 8, 12, 15, 17])
def test_float_text_equals_python_round_repr(precision):
    x = _hard_floats(45_000 if precision != 4 else 270_000, seed=precision)
    valid = np.random.default_rng(1).random(len(x)) > 0.02
    arr = pa.array(x, mask=~valid)
    flat, lengths = format_rows([arr], precision, sep_after=np.ones(len(x), bool), chunk_rows=4096,
                                want_lengths=True)
    got = to_text(flat, "|", "U").split("|")[:-1]
    expected = [format_value(v, precision, "U") for v in arr.to_pylist()]
    bad = [(v, g, e) for v, g, e in zip(arr.to_pylist(), got, expected) if g != e]
    assert not bad, bad[:10]
    assert int(lengths.sum()) == len(flat)


def test_rounded_abs_is_exact_near_halves():
    # x*10**4 lands within one ulp of k + 0.5: the exact binary value decides, as in Python.
    base = np.arange(1, 200_000, dtype=np.float64) / 10_000 + 0.00005
    for x in (base, np.nextafter(base, 0), np.nextafter(base, 1)):
        d = rounded_abs(x, 4)
        assert np.array_equal(d, np.array([round(round(v, 4) * 10_000) for v in x.tolist()], dtype=float))


def test_integers_strings_bools_and_nulls():
    cols = [
        pa.array([0, -7, 12345678901234, None, -(2**63), 2**63 - 1], pa.int64()),
        pa.array([1, 2, 3, 4, 5, 6], pa.uint8()),
        pa.array(["a", "", None, "x,y", "ünï", "z"]),
        pa.array([True, False, None, True, False, True]),
        pa.array([None] * 6, pa.null()),
        pa.array([1.0, None, 2.5, -0.0, float("nan"), 1e300], pa.float32()),
    ]
    flat, _ = format_rows(cols, 4, value_sep=b";", sep_after=np.ones(6, bool))
    rows = to_text(flat, "|", "<U>").split("|")[:-1]
    expected = [";".join(format_value(c[i].as_py(), 4, "<U>") for c in cols) for i in range(6)]
    assert rows == expected


def test_builtin_alphabet_writes_the_tokenizers_ids():
    lt = load_tokenizer(None)
    x = _hard_floats(9_000, seed=3)
    cols = [pa.array(x), pa.array(np.arange(len(x)) - 4000)]
    sep_after = np.ones(len(x), bool)
    sep_after[-1] = False
    codes, _ = format_rows(cols, 4, sep_after=sep_after, ab=lt.alphabet)
    text = "<|sep|>".join(f"{format_value(a, 4)},{b}" for a, b in zip(x.tolist(), cols[1].to_pylist()))
    assert codes.astype(int).tolist() == lt.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert to_text(codes, "<|sep|>", "<|UNK|>", lt.alphabet) == text


def test_unrepresentable_text_names_the_column():
    lt = load_tokenizer(None)
    with pytest.raises(UnformattableValue) as err:
        format_rows([pa.array([1.0, 2.0]), pa.array(["1.5", "4C"])], 4, ab=lt.alphabet, names=["q", "policy"])
    assert err.value.column == "policy" and err.value.example == "4C"
    with pytest.raises(UnformattableValue):
        format_rows([pa.array(["bad\x01byte"])], 4, ab=TEXT)
