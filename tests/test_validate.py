import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from msenc_lib.data.schema import UNIFIED_COLUMNS
from msenc_lib.data.validate import (
    CYCLE0_ZERO_ROWS,
    EMPTY_DQDV,
    EXTRA_COLUMNS,
    FLOAT_CYCLE_NUMBER,
    MISSING_OPTIONAL,
    NAN_VALUES,
    NUMERIC_TEXT,
    REPEATED_TIMESTAMPS,
    UNMEASURED,
    UnifiedValidator,
    ValidationReport,
    lossless_numbers,
)
from msenc_lib.data.repair import DUPLICATE_TIMESTAMPS, NON_FINITE, TIME_RESET
from msenc_lib.errors import InputDataError


def to_arrow(df) -> pa.Table:
    """A pyarrow Table from a pandas DataFrame (no index) or a Table: float NaN stays NaN (not null), so NaN
    and empty values are told apart; an object column with mixed content becomes text, so that validation
    can quote the value that is not a number."""
    if isinstance(df, pa.Table):
        return df
    arrays = {}
    for name in df.columns:
        series = df[name]
        if series.dtype.kind == "f":
            arrays[str(name)] = pa.array(series.to_numpy(), from_pandas=False)
            continue
        try:
            arrays[str(name)] = pa.Array.from_pandas(series)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            arrays[str(name)] = pa.array([None if v is None or (isinstance(v, float) and v != v) else str(v)
                                          for v in series.tolist()], pa.string())
    return pa.table(arrays)


def validated(df, source: str, allow_nan: bool = False, strict: bool = False) -> tuple[pa.Table, UnifiedValidator]:
    """A whole table validated at once, as a reader validates its batches: normalised table and validator."""
    v = UnifiedValidator(source, allow_nan=allow_nan, strict=strict)
    table = to_arrow(df)
    v.check_columns(table.column_names)
    return v.validate_batch(table, 0), v


def normalize_unified(df, source: str, allow_nan: bool = False, strict: bool = False
                      ) -> tuple[pa.Table, ValidationReport]:
    out, v = validated(df, source, allow_nan, strict)
    return out, v.report


def validate_unified(df, source: str, allow_nan: bool = False, strict: bool = False) -> ValidationReport:
    return normalize_unified(df, source, allow_nan=allow_nan, strict=strict)[1]


def table(n_cells=2, cycles=(0, 1, 2), rows=4) -> pd.DataFrame:
    """A small clean unified table: cycle 0 opens with two all-zero rows at time 0."""
    recs = []
    for c in range(n_cells):
        for cyc in cycles:
            if cyc == 0:
                recs += [dict(cell_key=f"b1c{c}", cycle_number=0, time=0.0, current=0.0, voltage=0.0,
                              charge_capacity=0.0, discharge_capacity=0.0, temperature=0.0, discharge_dQdV=0.0)] * 2
            for i in range(rows):
                recs.append(dict(cell_key=f"b1c{c}", cycle_number=cyc, time=0.5 * i, current=[4.0, 1.0, -4.0, 0][i % 4],
                                 voltage=3.0 + 0.1 * i, charge_capacity=0.1 * i, discharge_capacity=0.05 * i,
                                 temperature=30 + i, discharge_dQdV=-0.1 * i if i < rows - 1 else np.nan))
    df = pd.DataFrame(recs)
    df["cycle_life"] = 500
    df["discharge_policy"] = 400
    df["batch_number"] = 1
    for k in range(1, 5):
        df[f"charge_policy_Q{k}"] = 3.6
    return df[UNIFIED_COLUMNS]


def first_row_of(df, mask) -> int:
    return int(np.flatnonzero(np.asarray(mask))[0]) + 1  # 1-based data row


def test_clean_table_passes_and_reports_real_file_quirks():
    df = table()
    report = validate_unified(df, "clean.csv")
    assert report.n_rows == len(df) and report.n_cells == 2
    counts = report.counts()
    assert counts[CYCLE0_ZERO_ROWS] == 4  # two per cell
    assert counts[EMPTY_DQDV] == 2 * 3  # last row of each cycle
    # the first regular row of cycle 0 repeats the zero rows' time 0 (the zero rows themselves are counted above)
    assert counts[REPEATED_TIMESTAMPS] == 2
    assert FLOAT_CYCLE_NUMBER not in counts and MISSING_OPTIONAL not in counts and EXTRA_COLUMNS not in counts


# ---------------------------------------------------------------------------- errors: one test per bad input
def test_missing_required_column_names_file_and_column():
    df = table().drop(columns=["voltage"])
    with pytest.raises(InputDataError, match=r"bad\.csv: required column\(s\) \['voltage'\] missing"):
        validate_unified(df, "bad.csv")


def test_nan_in_required_column_strict_names_row_cell_column():
    df = table()
    df.loc[9, "voltage"] = np.nan
    with pytest.raises(InputDataError) as e:
        validate_unified(df, "x.csv", strict=True)
    msg = str(e.value)
    assert "x.csv: row 10 (1-based data row of the file)" in msg
    assert f"cell {df.cell_key[9]!r}" in msg and "column 'voltage'" in msg and "NaN" in msg and "strict" in msg


def test_nan_inf_and_empty_rows_are_dropped_and_counted_per_cell_and_cycle():
    t = to_arrow(table())
    volt = t.column("voltage").to_pylist()
    volt[3] = None  # b1c0 cycle 0
    t = t.set_column(t.column_names.index("voltage"), "voltage", pa.array(volt, pa.float64()))
    cur = t.column("current").to_pylist()
    cur[20], cur[21] = float("inf"), float("nan")  # b1c1 cycle 1
    t = t.set_column(t.column_names.index("current"), "current", pa.array(cur, pa.float64()))
    out, v = validated(t, "x.csv")
    assert out.num_rows == t.num_rows - 3
    assert v.repairs.total(NON_FINITE) == 3
    records = {(r.kind, r.cell_key): r for r in v.repairs.records()}
    assert records[(NON_FINITE, "b1c0")].cycles == {"0": 1} and records[(NON_FINITE, "b1c0")].action == "dropped"
    assert records[(NON_FINITE, "b1c1")].cycles == {"1": 2}
    assert v.report.count("dropped_rows") == 3
    assert np.isfinite(out.column("current").to_numpy()).all()


def test_inf_in_required_column_strict():
    df = table()
    df.loc[20, "current"] = np.inf
    with pytest.raises(InputDataError, match=r"row 21 .*cell 'b1c1', column 'current': value inf"):
        validate_unified(df, "x.csv", strict=True)


def test_empty_value_in_required_column_strict():
    t = pa.Table.from_pandas(table(), preserve_index=False)
    volt = t.column("voltage").to_pylist()
    volt[3] = None
    t = t.set_column(t.column_names.index("voltage"), "voltage", pa.array(volt, pa.float64()))
    with pytest.raises(InputDataError, match=r"row 4 .*column 'voltage': empty value"):
        validate_unified(t, "x.parquet", strict=True)


def test_unmeasured_temperature_is_kept_as_null():
    df = table()
    df.loc[9, "temperature"] = np.nan
    df.loc[10, "temperature"] = np.inf
    out, v = validated(df, "x.csv", strict=True)
    assert out.num_rows == len(df) and out.column("temperature").null_count == 2
    assert v.report.count(UNMEASURED) == 2 and v.repairs.total(NON_FINITE) == 0


def test_non_numeric_value_is_quoted():
    df = table()
    df["voltage"] = df["voltage"].astype(object)
    df.loc[6, "voltage"] = "3.4V"
    with pytest.raises(InputDataError) as e:
        validate_unified(df, "x.csv")
    assert "row 7" in str(e.value) and "column 'voltage'" in str(e.value) and "'3.4V'" in str(e.value)


def test_non_numeric_value_in_optional_numeric_column():
    df = table()
    df["cycle_life"] = df["cycle_life"].astype(object)
    df.loc[2, "cycle_life"] = "long"
    with pytest.raises(InputDataError, match=r"row 3 .*column 'cycle_life': non-numeric value 'long'"):
        validate_unified(df, "x.csv")


@pytest.mark.parametrize("empty", ["", "   ", None])
def test_empty_cell_key(empty):
    df = table()
    df.loc[5, "cell_key"] = empty
    with pytest.raises(InputDataError, match=r"row 6 .*column 'cell_key': empty cell_key"):
        validate_unified(df, "x.csv")


def test_time_going_backwards_inside_a_cycle_strict():
    df = table()
    # 4th row of cycle 1 of b1c0 goes back in time
    idx = df.index[(df.cell_key == "b1c0") & (df.cycle_number == 1)][3]
    df.loc[idx, "time"] = 0.2
    with pytest.raises(InputDataError) as e:
        validate_unified(df, "x.csv", strict=True)
    msg = str(e.value)
    assert f"row {idx + 1} " in msg and "cell 'b1c0'" in msg and "column 'time'" in msg
    assert "backwards inside cycle 1" in msg


def test_time_reset_inside_a_cycle_is_rebased_and_counted():
    df = table(rows=6)
    rows = df.index[(df.cell_key == "b1c1") & (df.cycle_number == 2)]
    df.loc[rows[3:], "time"] = [0.0, 0.5, 1.0]  # the clock restarts at the 4th row: 0, .5, 1, 0, .5, 1
    out, v = validated(df, "x.csv")
    times = out.column("time").to_numpy()[rows]
    np.testing.assert_allclose(times, [0.0, 0.5, 1.0, 1.0, 1.5, 2.0])  # continues from the previous row
    assert v.repairs.total(TIME_RESET) == 1
    (rec,) = [r for r in v.repairs.records() if r.kind == TIME_RESET]
    assert (rec.cell_key, rec.cycles, rec.action) == ("b1c1", {"2": 1}, "rebased")
    other = df.index[(df.cell_key == "b1c0")]
    np.testing.assert_array_equal(out.column("time").to_numpy()[other], df.time.to_numpy()[other])


def test_time_may_restart_at_each_cycle_and_each_cell():
    out, v = validated(table(n_cells=3), "x.csv")  # time restarts at 0 every cycle: fine
    assert v.report.n_rows > 0 and v.repairs.total(TIME_RESET) == 0


def test_time_backwards_across_streamed_batches():
    df = table()
    t = pa.Table.from_pandas(df, preserve_index=False)
    split = int(np.flatnonzero((df.cell_key == "b1c0") & (df.cycle_number == 1))[2])
    rest = t.slice(split).to_pandas()
    rest.loc[0, "time"] = -1.0  # first row of the second batch is earlier than the last of the first
    rest = pa.Table.from_pandas(rest, preserve_index=False)
    v = UnifiedValidator("big.csv", strict=True)
    v.validate_batch(t.slice(0, split), 0)
    with pytest.raises(InputDataError, match=rf"row {split + 1} .*cell 'b1c0'.*backwards inside cycle 1"):
        v.validate_batch(rest, split)
    v = UnifiedValidator("big.csv")
    first = v.validate_batch(t.slice(0, split), 0)
    second = v.validate_batch(rest, split)
    last_time = first.column("time")[-1].as_py()
    assert second.column("time")[0].as_py() == last_time  # re-based onto the previous batch's last row
    assert second.column("time")[1].as_py() == last_time + (df.time[split + 1] - (-1.0))
    assert v.repairs.total(TIME_RESET) == 1


# ------------------------------------------------------------------------------------- accepted with warnings
def test_repeated_timestamps_are_counted_not_dropped():
    df = table()
    idx = df.index[(df.cell_key == "b1c1") & (df.cycle_number == 2)][2]
    df.loc[idx, "time"] = df.loc[idx - 1, "time"]
    out, v = validated(df, "x.csv")
    assert v.report.count(REPEATED_TIMESTAMPS) == validate_unified(table(), "x.csv").count(REPEATED_TIMESTAMPS) + 1
    assert out.num_rows == len(df)
    per_cell = {r.cell_key: r.cycles for r in v.repairs.records() if r.kind == DUPLICATE_TIMESTAMPS}
    assert per_cell["b1c1"] == {"0": 1, "2": 1} and per_cell["b1c0"] == {"0": 1}


def test_float_cycle_number_is_kept_and_reported():
    df = table()
    df["cycle_number"] = df["cycle_number"].astype(float)
    out, report = normalize_unified(df, "third_dataset.csv")
    assert report.count(FLOAT_CYCLE_NUMBER) == len(df)
    assert out.schema.field("cycle_number").type == pa.float64()


def test_absent_optional_columns_and_extra_columns():
    df = table().drop(columns=["batch_number", "discharge_dQdV", "cycle_life"])
    df.insert(0, "channel", 7)  # an extra column before the canonical ones
    df["comment"] = "ok"
    out, report = normalize_unified(df, "nca.csv")
    assert report.count(MISSING_OPTIONAL) == 1
    assert "batch_number" in report.warnings[0].message or any("batch_number" in w.message for w in report.warnings)
    assert report.count(EXTRA_COLUMNS) == 1
    expected = [c for c in UNIFIED_COLUMNS if c in df.columns] + ["channel", "comment"]
    assert out.column_names == expected
    assert out.column("channel").to_pylist() == [7] * len(df)


def test_allow_nan_keeps_nan_rows_but_drops_empties():
    df = table()
    df.loc[4, "voltage"] = np.nan
    out, report = normalize_unified(df, "x.csv", allow_nan=True)
    assert report.count(NAN_VALUES) == 1 and out.num_rows == len(df)
    t = pa.Table.from_pandas(table(), preserve_index=False)
    volt = t.column("voltage").to_pylist()
    volt[0] = None
    t = t.set_column(t.column_names.index("voltage"), "voltage", pa.array(volt, pa.float64()))
    out, v = validated(t, "x.csv", allow_nan=True)
    assert out.num_rows == t.num_rows - 1 and v.repairs.total(NON_FINITE) == 1
    with pytest.raises(InputDataError, match="empty value"):
        normalize_unified(t, "x.csv", allow_nan=True, strict=True)


def test_identifier_columns_stay_text_numbers_convert():
    codes = pa.array(["12345678901234567890", "00123", None, "7"])
    assert lossless_numbers(codes).to_pylist() == codes.to_pylist()  # 20 digits / leading zero: kept as text
    assert lossless_numbers(pa.array(["1", "22", None])).type == pa.int64()
    assert lossless_numbers(pa.array(["1.5", "2", "3e2"])).to_pylist() == [1.5, 2.0, 300.0]
    assert lossless_numbers(pa.array(["1.5", "x"])).type == pa.string()
    assert lossless_numbers(pa.array(["1234567890123456789.0"])).type == pa.string()


def test_numbers_stored_as_text_are_converted():
    df = table()
    df["batch_number"] = df["batch_number"].astype(str)
    df["voltage"] = df["voltage"].map(repr)
    out, report = normalize_unified(df, "x.parquet")
    assert out.schema.field("batch_number").type == pa.int64()
    assert out.schema.field("voltage").type == pa.float64()
    assert report.count(NUMERIC_TEXT) == 2 * len(df)
    assert out.column("voltage").to_pylist() == pytest.approx(table()["voltage"].tolist())


def test_warnings_merge_by_kind_and_message():
    t = pa.Table.from_pandas(table(), preserve_index=False)
    a, b = UnifiedValidator("a.csv"), UnifiedValidator("b.csv")
    a.validate_batch(t, 0)
    b.validate_batch(t, 0)
    n = a.report.count(CYCLE0_ZERO_ROWS)
    a.report.merge(b.report)
    assert a.report.count(CYCLE0_ZERO_ROWS) == 2 * n and a.report.n_rows == 2 * len(t)
    assert len([w for w in a.report.warnings if w.kind == CYCLE0_ZERO_ROWS]) == 1
