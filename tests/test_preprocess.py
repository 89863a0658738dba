"""msenc preprocess: golden texts (derived by hand from the original's rules), modes, inputs, bad inputs."""

from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from msenc_cli.main import main as cli_main
from msenc_lib.preprocess import PreprocessConfig, run_preprocess, scan, stage
from msenc_lib.errors import ConfigError, InputDataError, StorageError
from msenc_lib.layout import read_sequence_table
from msenc_lib.preprocess.stage import token_id_type

DATA = Path(__file__).parent / "data" / "sequences"
GOLDEN = DATA / "golden_unified.csv"
SEP = "<|sep|>"

# The golden file's rows as text, derived by hand: every column but cell_key in file order, floats as
# str(round(x, 4)) (3.14159 -> 3.1416, -0.000012 -> -0.0, 1.99996 -> 2.0, 29.99999 -> 30.0), integers as
# str(x), the empty discharge_dQdV as <|UNK|>. b1c0's rows listed in (cycle_number, time) order: the file
# has (1, 2.25) before (1, 0.5), and two identical cycle-0 rest rows at time 0.
B1C0 = [
    "0,0.0,1852,400,0.0,0.0,0.0,0.0,0.0,1,0.0,3.6,3.6,3.6,3.6",
    "0,0.0,1852,400,0.0,0.0,0.0,0.0,0.0,1,0.0,3.6,3.6,3.6,3.6",
    "0,1.5,1852,400,3.6,3.1416,0.4568,0.0,30.1235,1,-0.0,3.6,3.6,3.6,3.6",
    "1,0.5,1852,400,2.0,3.3,0.5,0.1,30.0,1,-1.5,3.6,3.6,3.6,3.6",
    "1,2.25,1852,400,-4.0,2.7183,1.2,0.9877,31.5,1,<|UNK|>,3.6,3.6,3.6,3.6",
    "2,0.75,1852,400,-0.0,2.0,-0.1,1.05,30.0,1,0.1235,3.6,3.6,3.6,3.6",
]
B1C1 = [
    "0,0.0,803,400,0.0,0.0,0.0,0.0,0.0,1,0.0,5.4,4.68,3.6,3.6",
    "1,10.0,803,400,5.4,3.5,1.0,0.0,33.3333,1,2.5,5.4,4.68,3.6,3.6",
]
B1C2 = ["5,1.0,300,400,1.0,3.0,0.9,0.8,25.0,1,0.5,4.0,4.0,4.0,4.0"]

# With smoothing, charge_capacity (8th value) becomes clip(x, 0, 1.1) then the max over the row and all later
# rows of the cell: b1c0 [0, 0, 0.45678, 0.5, 1.2, -0.1] -> [1.1, 1.1, 1.1, 1.1, 1.1, 0.0]; b1c1 [0, 1] -> [1, 1].
B1C0_SMOOTH = [
    "0,0.0,1852,400,0.0,0.0,1.1,0.0,0.0,1,0.0,3.6,3.6,3.6,3.6",
    "0,0.0,1852,400,0.0,0.0,1.1,0.0,0.0,1,0.0,3.6,3.6,3.6,3.6",
    "0,1.5,1852,400,3.6,3.1416,1.1,0.0,30.1235,1,-0.0,3.6,3.6,3.6,3.6",
    "1,0.5,1852,400,2.0,3.3,1.1,0.1,30.0,1,-1.5,3.6,3.6,3.6,3.6",
    "1,2.25,1852,400,-4.0,2.7183,1.1,0.9877,31.5,1,<|UNK|>,3.6,3.6,3.6,3.6",
    "2,0.75,1852,400,-0.0,2.0,0.0,1.05,30.0,1,0.1235,3.6,3.6,3.6,3.6",
]
B1C1_SMOOTH = [
    "0,0.0,803,400,0.0,0.0,1.0,0.0,0.0,1,0.0,5.4,4.68,3.6,3.6",
    "1,10.0,803,400,5.4,3.5,1.0,0.0,33.3333,1,2.5,5.4,4.68,3.6,3.6",
]
B1C2_SMOOTH = ["5,1.0,300,400,1.0,3.0,0.9,0.8,25.0,1,0.5,4.0,4.0,4.0,4.0"]


def training_stream(rows: list[str], seed: int, max_len: int) -> str:
    """The documented training-mode rule: one permutation of range(max_len) for all cells."""
    perm = np.random.default_rng(seed).permutation(max_len)
    return SEP.join(rows[i] for i in perm if i < len(rows))


def embedding_streams(cell: str, rows: list[str], cycles: list[int], seed: int) -> dict[int, str]:
    """The documented embedding-mode rule: keys default_rng([seed, crc32(cell)]).random(n) over the cell's
    rows in time order; the rows of a cycle in the order of their keys."""
    keys = np.random.default_rng([seed, zlib.crc32(cell.encode())]).random(len(rows))
    out = {}
    for c in sorted(set(cycles)):
        idx = [i for i in range(len(rows)) if cycles[i] == c]
        out[c] = SEP.join(rows[i] for i in sorted(idx, key=lambda i: keys[i]))
    return out


def decoded(out: Path) -> dict:
    """Sequences decoded with the saved tokenizer loaded through transformers."""
    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    seqs = read_sequence_table(str(out)).to_pylist()
    res = {}
    for s in seqs:
        assert s["n_tokens"] == len(s["input_ids"])
        key = (s["cell_key"], s["cycle_number"]) if "cycle_number" in s else s["cell_key"]
        res[key] = tok.decode(s["input_ids"])
    return res


def run(tmp_path: Path, name: str = "out", input_path: str | Path = GOLDEN, **cfg) -> tuple:
    cfg.setdefault("progress", False)
    out = tmp_path / name
    result = run_preprocess(PreprocessConfig(**cfg), str(input_path), str(out))
    return result, out


# ------------------------------------------------------------------------------------------- golden
def test_golden_training_mode_no_smoothing(tmp_path):
    result, out = run(tmp_path, smooth_charge_capacity=False)
    assert result.mode == "training" and result.max_len == 6 and result.n_cells == 3
    texts = decoded(out)
    assert texts == {
        "b1c0": training_stream(B1C0, 24, 6),
        "b1c1": training_stream(B1C1, 24, 6),
        "b1c2": training_stream(B1C2, 24, 6),
    }
    # The permutation really reorders (seed 24, max_len 6 is not the identity) and is shared by all cells.
    assert texts["b1c0"] != SEP.join(B1C0)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["text_columns"] == pd.read_csv(GOLDEN, nrows=0).columns[1:].tolist()
    assert manifest["n_rows"] == 9 and manifest["tokenizer"]["lossless"] is True


def test_golden_training_mode_smoothing_and_cutoff(tmp_path):
    # --time-cutoff 1 on cycle_number keeps cycles 0 and 1: b1c0 loses its cycle-2 row, b1c2 (cycle 5 only)
    # is emptied: reported and skipped, not fatal.
    result, out = run(tmp_path, time_cutoff=[1])
    assert [s.cell_key for s in result.skipped_cells] == ["b1c2"]
    assert result.skipped_cells[0].rows_in == 1 and any("b1c2" in w for w in result.warnings)
    assert result.max_len == 5 and result.n_rows == 7 and result.n_rows_in == 9
    # Smoothing runs on the rows left after the cutoff: b1c0's cycle-2 0.0 no longer counts.
    texts = decoded(out)
    assert texts == {"b1c0": training_stream(B1C0_SMOOTH[:5], 24, 5), "b1c1": training_stream(B1C1_SMOOTH, 24, 5)}


def test_golden_embedding_mode_and_text_csv(tmp_path):
    result, out = run(tmp_path, is_training_shuffled=False, seed=7, text=True)
    assert result.mode == "embedding" and result.n_sequences == 6
    texts = decoded(out)
    expected = {}
    for cell, rows, cycles in (("b1c0", B1C0_SMOOTH, [0, 0, 0, 1, 1, 2]), ("b1c1", B1C1_SMOOTH, [0, 1]),
                               ("b1c2", B1C2_SMOOTH, [5])):
        for cyc, stream in embedding_streams(cell, rows, cycles, 7).items():
            expected[(cell, cyc)] = stream
    assert texts == expected
    assert sorted(texts[("b1c0", 0)].split(SEP)) == sorted(B1C0_SMOOTH[:3])
    table = read_sequence_table(str(out))
    assert table.schema.field("cycle_number").type == pa.int64()
    assert table.column("cell_key").to_pylist() == ["b1c0"] * 3 + ["b1c1"] * 2 + ["b1c2"]
    # The original's per-cell CSV: cell_key, cycle_number (as text), the quoted stream.
    csv_text = (out / "text" / "b1c1.csv").read_text()
    assert csv_text == (f'cell_key,cycle_number,battery_stream\nb1c1,0,"{B1C1_SMOOTH[0]}"\n'
                        f'b1c1,1,"{B1C1_SMOOTH[1]}"\n')
    back = pd.read_csv(out / "text" / "b1c0.csv")
    assert back["battery_stream"].tolist() == [expected[("b1c0", c)] for c in (0, 1, 2)]


def test_training_text_csv_and_parquet_input_match_csv_input(tmp_path):
    parquet = tmp_path / "golden.parquet"
    pq.write_table(pacsv.read_csv(GOLDEN), parquet)
    r1, out_csv = run(tmp_path, "from_csv", text=True)
    r2, out_pq = run(tmp_path, "from_parquet", input_path=parquet, text=True)
    assert decoded(out_csv) == decoded(out_pq)
    csv_text = (out_csv / "text" / "b1c1.csv").read_text()
    assert csv_text == f'cell_key,battery_stream\nb1c1,"{training_stream(B1C1_SMOOTH, 24, 6)}"\n'
    assert read_sequence_table(str(out_csv)).equals(read_sequence_table(str(out_pq)))


def test_float_cycle_numbers_and_exclude_features(tmp_path):
    src = tmp_path / "float_cycles.csv"
    src.write_text("cell_key,cycle_number,time,voltage,charge_capacity,note\n"
                   "nca1,1.0,0.5,3.61234,0.1,x\nnca1,1.0,0.25,3.6,0.2,y\nnca1,2.0,0.0,3.0,,z\n")
    result, out = run(tmp_path, input_path=src, is_training_shuffled=False, smooth_charge_capacity=False,
                      exclude_features=["note", "not_a_column"])
    assert any("not_a_column" in w for w in result.warnings)
    texts = decoded(out)
    assert texts == {("nca1", 1.0): embedding_streams("nca1", ["1.0,0.25,3.6,0.2", "1.0,0.5,3.6123,0.1"],
                                                      [1, 1], 24)[1],
                     ("nca1", 2.0): "2.0,0.0,3.0,<|UNK|>"}
    assert read_sequence_table(str(out)).schema.field("cycle_number").type == pa.float64()


# ------------------------------------------------------------------------------------ determinism
@pytest.fixture(scope="module")
def tiny_unified(tmp_path_factory) -> Path:
    from msenc_lib.data.synthetic import GenerateDataConfig, run_generate_data

    out = tmp_path_factory.mktemp("tiny") / "unified"
    run_generate_data(GenerateDataConfig(size="tiny", seed=0, n_cells=4, last_cycle=30, progress=False), str(out))
    return out


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "sequences").glob("*.parquet"))}


def test_workers_do_not_change_the_output(tiny_unified, tmp_path):
    _, one = run(tmp_path, "w1", input_path=tiny_unified, shard_rows=500, workers=1)
    r2, two = run(tmp_path, "w2", input_path=tiny_unified, shard_rows=500, workers=2)
    assert r2.n_shards >= 3
    assert _shard_bytes(one) == _shard_bytes(two)
    m1, m2 = (json.loads((d / "manifest.json").read_text()) for d in (one, two))
    assert m1["cells"] == m2["cells"]


def test_matches_polars_reimplementation_of_original(tiny_unified, tmp_path, monkeypatch):
    pytest.importorskip("polars")
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    from reference_preprocess import reference_preprocess

    result, out = run(tmp_path, input_path=tiny_unified, time_cutoff=[20])
    ref = reference_preprocess(sorted(str(p) for p in tiny_unified.glob("*.parquet")), time_cutoff=[20],
                               permutation=np.random.default_rng(24).permutation(result.max_len))
    assert decoded(out) == ref


def test_text_is_byte_identical_to_the_reference_csv_with_workers(tiny_unified, tmp_path, monkeypatch):
    """The per-cell text CSVs (``--text``) of a 2-worker run, byte for byte those of the polars re-implementation
    of the original, and the uint8 token ids decode to the same text."""
    pytest.importorskip("polars")
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    from reference_preprocess import main as reference_main

    result, out = run(tmp_path, input_path=tiny_unified, workers=2, shard_rows=2_000, text=True)
    assert result.n_shards >= 2
    assert reference_main(["--input", str(tiny_unified / "*.parquet"), "--output-dir", str(tmp_path / "ref")]) == 0
    ref = {p.name: p.read_bytes() for p in sorted((tmp_path / "ref").glob("*.csv"))}
    mine = {p.name: p.read_bytes() for p in sorted((out / "text").glob("*.csv"))}
    assert len(ref) == 4 and mine == ref
    texts = decoded(out)
    assert {f"{k}.csv": v for k, v in texts.items()} == {k: pd.read_csv(tmp_path / "ref" / k)["battery_stream"][0]
                                                         for k in ref}
    assert read_sequence_table(str(out)).schema.field("input_ids").type.value_type == pa.uint8()


def test_token_id_type_is_the_narrowest_for_the_vocabulary():
    assert [token_id_type(n) for n in (23, 256, 257, 65_536, 65_537, 250_000)] == [
        pa.uint8(), pa.uint8(), pa.uint16(), pa.uint16(), pa.int32(), pa.int32()]


def test_workers_start_with_the_memory_settings_and_user_values_win(monkeypatch):
    monkeypatch.setenv("MALLOC_TOP_PAD_", "12345")
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    with stage._worker_pool(2) as pool:
        seen = pool.submit(_worker_facts).result()
    assert seen["pool"] == "system" and seen["NUMPY_MADVISE_HUGEPAGE"] == "0"
    assert seen["MALLOC_TOP_PAD_"] == "12345"  # set by the user: kept
    # This process's environment is as it was.
    assert "ARROW_DEFAULT_MEMORY_POOL" not in os.environ and os.environ["MALLOC_TOP_PAD_"] == "12345"


def test_one_worker_sends_a_big_input_to_a_worker_process(tiny_unified, tmp_path, monkeypatch):
    _, in_process = run(tmp_path, "in_process", input_path=tiny_unified, shard_rows=500)
    pools = []
    real = stage._worker_pool

    def recording(workers, spawn_one=False):
        pools.append((workers, spawn_one))
        return real(workers, spawn_one)

    monkeypatch.setattr(stage, "SPAWN_MIN_ROWS", 1)
    monkeypatch.setattr(stage, "_worker_pool", recording)
    _, spawned = run(tmp_path, "spawned", input_path=tiny_unified, shard_rows=500)
    assert pools == [(1, False), (1, True)]  # the scan in this process, the shards in one worker
    assert _shard_bytes(spawned) == _shard_bytes(in_process)


def _worker_facts() -> dict:
    return {"pool": pa.default_memory_pool().backend_name, **{k: os.environ.get(k) for k in stage.WORKER_ENV}}


def test_one_multi_cell_csv_equals_per_cell_files(tiny_unified, tmp_path, monkeypatch):
    table = pa.concat_tables([pq.read_table(p) for p in sorted(tiny_unified.glob("*.parquet"))])
    # Interleave the cells' rows (keeping each cell's own order) and write one CSV; small blocks force
    # the streaming path through many blocks.
    df = table.to_pandas()
    df["k"] = df.groupby("cell_key").cumcount()
    df = df.sort_values(["k", "cell_key"], kind="stable").drop(columns="k")
    big = tmp_path / "all.csv"
    df.to_csv(big, index=False)
    monkeypatch.setattr(scan, "CSV_BLOCK", 1 << 14)
    _, from_csv = run(tmp_path, "csv", input_path=big)
    _, from_parquet = run(tmp_path, "pq", input_path=tiny_unified)
    assert decoded(from_csv) == decoded(from_parquet)


def test_csv_type_change_after_first_block_is_promoted(tmp_path, monkeypatch):
    rows = ["cell_key,cycle_number,time,value,charge_capacity"]
    rows += [f"c1,{i},0.0,{i},0.5" for i in range(400)]  # 'value' looks like integers for a while...
    rows += ["c1,400,0.0,2.5,0.5"]  # ...then a float: the whole column is float, as with one read
    src = tmp_path / "types.csv"
    src.write_text("\n".join(rows) + "\n")
    monkeypatch.setattr(scan, "CSV_BLOCK", 1 << 10)
    _, out = run(tmp_path, input_path=src, is_training_shuffled=False)
    texts = decoded(out)
    assert texts[("c1", 3)] == "3,0.0,3.0,0.5" and texts[("c1", 400)] == "400,0.0,2.5,0.5"


def test_s3_run_gives_identical_shards(tiny_unified, tmp_path, s3):
    from msenc_lib import storage

    for p in sorted(tiny_unified.iterdir()):
        storage.write_bytes(s3.uri("unified", p.name), p.read_bytes())
    cfg = PreprocessConfig(progress=False, shard_rows=2000, is_training_shuffled=False)
    r_s3 = run_preprocess(cfg, s3.uri("unified"), s3.uri("prep"))
    _, local = run(tmp_path, input_path=tiny_unified, shard_rows=2000, is_training_shuffled=False)
    keys = [k for k in s3.keys("prep/") if k.startswith("prep/sequences/")]
    assert len(keys) == r_s3.n_shards >= 2
    assert {k.rsplit("/", 1)[1]: storage.read_bytes(s3.uri(k)) for k in keys} == _shard_bytes(local)
    assert "prep/tokenizer/tokenizer.json" in s3.keys("prep/")


# --------------------------------------------------------------------------------- HF tokenizers
def _small_bpe(tmp_path: Path, with_sep: str | None = None) -> Path:
    """A small BPE tokenizer trained here (no hub), without unk/pad/mask (and sep unless given)."""
    from tokenizers import Tokenizer, decoders, models, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.decoder = decoders.Fuse()
    corpus = [",".join(B1C0 + B1C1).replace("<|UNK|>", "")] * 20
    core.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=60, show_progress=False))
    kwargs = {"sep_token": with_sep} if with_sep else {}
    tok = PreTrainedTokenizerFast(tokenizer_object=core, **kwargs)
    path = tmp_path / ("bpe_sep" if with_sep else "bpe")
    tok.save_pretrained(path)
    return path


def test_local_hf_tokenizer_is_patched_like_the_original(tmp_path):
    folder = _small_bpe(tmp_path)
    result, out = run(tmp_path, tokenizer_id=str(folder), smooth_charge_capacity=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tokenizer"]["added_tokens"] == ["<|sep|>", "<|UNK|>", "<|PAD|>", "<|MASK|>"]
    assert result.lossless and not manifest["tokenizer"]["builtin"]
    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    assert (tok.sep_token, tok.unk_token, tok.pad_token, tok.mask_token) == ("<|sep|>", "<|UNK|>", "<|PAD|>",
                                                                               "<|MASK|>")
    assert decoded(out)["b1c0"] == training_stream(B1C0, 24, 6)
    # BPE merges digits: fewer tokens than characters.
    table = read_sequence_table(str(out))
    seq = table.to_pylist()[0]
    assert seq["n_tokens"] < len(training_stream(B1C0, 24, 6))
    assert table.schema.field("input_ids").type.value_type == token_id_type(len(tok))
    _, emb = run(tmp_path, "emb", tokenizer_id=str(folder), smooth_charge_capacity=False, is_training_shuffled=False)
    assert decoded(emb)[("b1c0", 0)] == embedding_streams("b1c0", B1C0, [0, 0, 0, 1, 1, 2], 24)[0]


def test_tokenizer_sep_token_wins_over_time_sep(tmp_path):
    folder = _small_bpe(tmp_path, with_sep="[SEP]")
    result, out = run(tmp_path, tokenizer_id=str(folder), smooth_charge_capacity=False, time_sep="<|sep|>")
    assert any("[SEP]" in w for w in result.warnings)
    assert decoded(out)["b1c1"] == training_stream(B1C1, 24, 6).replace(SEP, "[SEP]")


def test_saved_builtin_tokenizer_folder_is_reused_on_the_fast_path(tmp_path):
    _, first = run(tmp_path, "first")
    result, second = run(tmp_path, "second", tokenizer_id=str(first / "tokenizer"))
    assert result.tokenizer == "msenc-numeric"
    assert _shard_bytes(first) == _shard_bytes(second)


# ------------------------------------------------------------------------------------- bad inputs
def _assert_nothing_written(path: Path) -> None:
    assert not path.exists()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}")]


@pytest.mark.parametrize("option,value,needle", [
    ("time_columns", ["cycle_numer", "time"], "did you mean 'cycle_number'"),
    ("id_column", "cell", "--column-id 'cell'"),
])
def test_unknown_columns_fail_clearly(tmp_path, option, value, needle):
    with pytest.raises(ConfigError, match="is not a column") as err:
        run(tmp_path, **{option: value})
    assert needle in str(err.value)
    _assert_nothing_written(tmp_path / "out")


def test_the_original_option_names_still_work():
    """column_id / column_time (the original's names; the fields are id_column / time_columns) in a document,
    the environment or as flags (the flags: test_cli_original_options_and_error_exit)."""
    old = PreprocessConfig.load({"column_id": "cell"}, environ={"MSENC_PREPROCESS__COLUMN_TIME": "cycle_number"})
    assert (old.id_column, old.time_columns) == ("cell", ["cycle_number"])
    assert PreprocessConfig(column_id="x").id_column == "x"


def test_cutoff_leaving_no_rows_fails(tmp_path):
    with pytest.raises(InputDataError, match="leaves no rows") as err:
        run(tmp_path, time_cutoff=[-1])
    assert "cycle_number >= 0" in str(err.value)
    _assert_nothing_written(tmp_path / "out")


def test_text_column_the_tokenizer_cannot_encode(tmp_path):
    df = pd.read_csv(GOLDEN)
    df.insert(11, "charge_policy", "3.6C(80%)-3.6C")
    src = tmp_path / "with_policy.csv"
    df.to_csv(src, index=False)
    with pytest.raises(InputDataError) as err:
        run(tmp_path, input_path=src)
    msg = str(err.value)
    assert "'charge_policy'" in msg and "--exclude-features charge_policy" in msg and "3.6C(80%)-3.6C" in msg
    _assert_nothing_written(tmp_path / "out")
    _, out = run(tmp_path, "ok", input_path=src, exclude_features=["charge_policy"], smooth_charge_capacity=False)
    assert decoded(out)["b1c1"] == training_stream(B1C1, 24, 6)


def test_bool_column_fails_and_hub_id_fails(tmp_path):
    src = tmp_path / "flags.csv"
    src.write_text("cell_key,cycle_number,time,charge_capacity,ok\nc,0,0.0,0.1,true\n")
    with pytest.raises(InputDataError, match="'ok'.*--exclude-features ok"):
        run(tmp_path, input_path=src)
    with pytest.raises(ConfigError, match="hub ids cannot be downloaded"):
        run(tmp_path, tokenizer_id="ibm-granite/granite-3.3-8b-base")
    _assert_nothing_written(tmp_path / "out")


def test_inputs_with_different_columns_and_missing_smoothing_column(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(GOLDEN, d / "a.csv")
    (d / "b.csv").write_text("cell_key,cycle_number,time\nx,0,0.0\n")
    with pytest.raises(InputDataError, match="columns differ"):
        run(tmp_path, input_path=d)
    with pytest.raises(ConfigError, match="--no-smooth-charge-capacity"):
        run(tmp_path, input_path=d / "b.csv")
    _, out = run(tmp_path, "ok", input_path=d / "b.csv", smooth_charge_capacity=False)
    assert decoded(out) == {"x": "0,0.0"}


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    _, out = run(tmp_path)
    before = _shard_bytes(out)
    with pytest.raises(StorageError, match="already exists"):
        run(tmp_path, smooth_charge_capacity=False)
    assert _shard_bytes(out) == before
    run_preprocess(PreprocessConfig(progress=False, smooth_charge_capacity=False), str(GOLDEN), str(out),
                   overwrite=True)
    assert _shard_bytes(out) != before


def test_cli_original_options_and_error_exit(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = cli_main(["preprocess", "--input-path", str(GOLDEN), "--output-dir", str(out), "--column-id", "cell_key",
                   "--time-sep", "<|sep|>", "--value-sep", ",", "--column-time", "cycle_number,time",
                   "--smooth-charge-capacity", "--time-cutoff", "1", "--is-training-shuffled", "--progress", "false"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["skipped_cells"][0]["cell_key"] == "b1c2"
    assert decoded(out)["b1c1"] == training_stream(B1C1_SMOOTH, 24, 5)
    rc = cli_main(["preprocess", "--input-path", str(GOLDEN), "--output-dir", str(tmp_path / "bad"),
                   "--column-time", "cycle_numer,time", "--progress", "false"])
    assert rc == 2
    assert "cycle_numer" in capsys.readouterr().err
    _assert_nothing_written(tmp_path / "bad")


def test_empty_separators_and_a_glob_of_cell_files(tmp_path):
    # The original's test setting: value_sep="" and time_sep="" join everything without separators.
    d = tmp_path / "cells"
    d.mkdir()
    df = pd.read_csv(GOLDEN)
    for cell, part in df.groupby("cell_key"):
        part.to_csv(d / f"{cell}.csv", index=False)
    _, out = run(tmp_path, input_path=str(d / "b1c*.csv"), value_sep="", time_sep="", smooth_charge_capacity=False)
    perm = np.random.default_rng(24).permutation(6)
    assert decoded(out)["b1c0"] == "".join(B1C0[i].replace(",", "") for i in perm)
    seq = read_sequence_table(str(out)).to_pylist()[0]
    assert 3 not in seq["input_ids"]  # no separator token at all
