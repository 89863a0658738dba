import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from msenc_lib.data import synthetic
from msenc_lib.data.readers import format_of, read_columns, read_csv_file, read_parquet_file, resolve_inputs
from msenc_lib.data.schema import UNIFIED_COLUMNS
from msenc_lib.errors import InputDataError


def read_table_file(path, fmt=None, allow_nan=False):
    """One CSV/Parquet file through the ingest readers, as one validated table and its report."""
    pieces: list[pa.Table] = []
    fmt = fmt or format_of(str(path))
    if fmt == "csv":
        report = read_csv_file(path, str(path), pieces.append, allow_nan=allow_nan, on_retry=pieces.clear)
    else:
        report = read_parquet_file(path, str(path), pieces.append, allow_nan=allow_nan)
    if not pieces:
        return pa.table({n: pa.array([], pa.null()) for n in read_columns(path, fmt, str(path))}), report
    return pa.concat_tables(pieces, promote_options="permissive"), report


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    """Three synthetic cells, cycles 0-3, as the unified table (pandas, file types)."""
    tables = [t for _, t in synthetic.generate("tiny", seed=3, n_cells=3, last_cycle=3)]
    return pa.concat_tables(tables).to_pandas()


def write_csv(df: pd.DataFrame, path) -> None:
    df.to_csv(path, index=False)  # as beep-data-utils writes it


def test_one_csv_with_many_cells_keeps_every_row_and_type(small, tmp_path):
    write_csv(small, tmp_path / "all.csv")
    table, report = read_table_file(tmp_path / "all.csv")
    assert table.column_names == UNIFIED_COLUMNS
    assert table.num_rows == len(small) and report.n_cells == 3
    out = table.to_pandas()
    pd.testing.assert_frame_equal(out, small, check_dtype=True)
    assert table.schema.field("cycle_life").type == pa.int64()
    assert table.schema.field("discharge_dQdV").type == pa.float64()


def test_ints_with_empty_cells_stay_ints(small, tmp_path):
    df = small.copy()
    df["cycle_life"] = df["cycle_life"].astype("Int64")
    df.loc[df.cell_key == "b2c0", "cycle_life"] = pd.NA  # written as empty cells
    write_csv(df, tmp_path / "x.csv")
    table, _ = read_table_file(tmp_path / "x.csv")
    assert table.schema.field("cycle_life").type == pa.int64()
    assert table.column("cycle_life").null_count == int((df.cell_key == "b2c0").sum())


def test_streamed_csv_with_floats_appearing_in_a_later_block(small, tmp_path):
    df = small.copy()
    df["cycle_number"] = df["cycle_number"].astype(object)
    df.loc[len(df) - 1, "cycle_number"] = 3.5  # only the last row: the first blocks look like integers
    write_csv(df, tmp_path / "x.csv")
    pieces = []
    report = read_csv_file(tmp_path / "x.csv", "x.csv", pieces.append, block_size=4096, on_retry=pieces.clear)
    assert len(pieces) > 3  # really streamed in several blocks
    table = pa.concat_tables(pieces)
    assert table.num_rows == len(df)
    assert table.schema.field("cycle_number").type == pa.float64()
    assert table.column("cycle_number")[len(df) - 1].as_py() == 3.5
    assert report.count("float_cycle_number") == len(df)


def test_non_numeric_value_in_a_later_block_names_its_row(small, tmp_path):
    df = small.copy()
    df["current"] = df["current"].astype(object)
    bad = len(df) - 5
    df.loc[bad, "current"] = "n/a?"
    write_csv(df, tmp_path / "x.csv")
    with pytest.raises(InputDataError) as e:
        read_csv_file(tmp_path / "x.csv", "x.csv", lambda t: None, block_size=4096)
    msg = str(e.value)
    assert f"row {bad + 1} (1-based data row of the file)" in msg
    assert f"cell {df.cell_key[bad]!r}" in msg and "column 'current'" in msg and "'n/a?'" in msg


def test_non_numeric_value_in_the_first_block(small, tmp_path):
    df = small.copy()
    df["temperature"] = df["temperature"].astype(object)
    df.loc[1, "temperature"] = "hot"
    write_csv(df, tmp_path / "x.csv")
    with pytest.raises(InputDataError, match=r"row 2 .*column 'temperature': non-numeric value 'hot'"):
        read_table_file(tmp_path / "x.csv")


def test_ragged_csv_is_reported(tmp_path):
    text = ",".join(UNIFIED_COLUMNS) + "\n" + ",".join(["b1c0"] + ["1"] * 15) + "\n" + "b1c0,1,2\n"
    (tmp_path / "x.csv").write_text(text)
    with pytest.raises(InputDataError, match=r"x\.csv.*(Expected 16 columns|columns)"):
        read_table_file(tmp_path / "x.csv")


def test_empty_csv_file(tmp_path):
    (tmp_path / "x.csv").write_text("")
    with pytest.raises(InputDataError, match="x.csv"):
        read_table_file(tmp_path / "x.csv")


def test_missing_column_is_reported_before_reading_data(small, tmp_path):
    write_csv(small.drop(columns=["voltage"]), tmp_path / "x.csv")
    seen = []
    with pytest.raises(InputDataError, match=r"required column\(s\) \['voltage'\] missing"):
        read_csv_file(tmp_path / "x.csv", "x.csv", seen.append)
    assert seen == []


def test_extra_columns_follow_the_canonical_ones(small, tmp_path):
    df = small.copy()
    df.insert(2, "step_index", 1)
    write_csv(df, tmp_path / "x.csv")
    table, report = read_table_file(tmp_path / "x.csv")
    assert table.column_names == UNIFIED_COLUMNS + ["step_index"]
    assert report.count("extra_columns") == 1


def test_gzip_csv(small, tmp_path):
    small.to_csv(tmp_path / "x.csv.gz", index=False, compression="gzip")
    table, _ = read_table_file(tmp_path / "x.csv.gz")
    assert table.num_rows == len(small)


def test_parquet_with_pandas_index_is_read_without_it(small, tmp_path):
    df = small.set_index(pd.RangeIndex(len(small)) + 10)
    df.index.name = "row_id"
    df.to_parquet(tmp_path / "x.parquet", index=True)
    pieces = []
    read_parquet_file(tmp_path / "x.parquet", "x.parquet", pieces.append, batch_size=100)
    table = pa.concat_tables(pieces)
    assert table.column_names == UNIFIED_COLUMNS and table.num_rows == len(small)


def test_parquet_non_numeric_column(small, tmp_path):
    df = small.copy()
    df["voltage"] = df["voltage"].map(str)
    df.loc[7, "voltage"] = "three"
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp_path / "x.parquet")
    with pytest.raises(InputDataError, match=r"x\.parquet: row 8 .*column 'voltage': non-numeric value 'three'"):
        read_table_file(tmp_path / "x.parquet")


def test_not_a_parquet_file(tmp_path):
    (tmp_path / "x.parquet").write_text("hello")
    with pytest.raises(InputDataError, match="not a readable Parquet file"):
        read_table_file(tmp_path / "x.parquet")


# -------------------------------------------------------------------------------------------- inputs
def test_resolve_folder_glob_and_format(tmp_path):
    (tmp_path / "a.csv").write_text("x")
    (tmp_path / "b.csv").write_text("x")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "_manifest.json").write_text("{}")
    (tmp_path / "_csv").mkdir()
    (tmp_path / "_csv" / "unified.csv").write_text("x")
    files, fmt, skipped = resolve_inputs(str(tmp_path))
    assert fmt == "csv" and [f.rsplit("/", 1)[1] for f in files] == ["a.csv", "b.csv"]
    assert [s.rsplit("/", 1)[1] for s in skipped] == ["notes.txt"]
    files, fmt, _ = resolve_inputs(str(tmp_path / "b*.csv"))
    assert [f.rsplit("/", 1)[1] for f in files] == ["b.csv"]
    (tmp_path / "c.parquet").write_text("x")
    with pytest.raises(InputDataError, match="several formats"):
        resolve_inputs(str(tmp_path))
    files, fmt, _ = resolve_inputs(str(tmp_path), "parquet")
    assert fmt == "parquet" and len(files) == 1
    with pytest.raises(InputDataError, match="no input files"):
        resolve_inputs(str(tmp_path / "nothing-*.csv"))
    with pytest.raises(InputDataError, match="unknown input format"):
        resolve_inputs(str(tmp_path), "xlsx")
