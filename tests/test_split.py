"""msenc split: generated (token-weighted, seeded), reused and preset assignments on all input kinds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from msenc_cli.main import main as cli_main
from msenc_lib.errors import ConfigError, InputDataError
from msenc_lib.layout import read_sequence_table, read_split_config
from msenc_lib.preprocess import PreprocessConfig, run_preprocess
from msenc_lib.split import SplitConfig, generate_split, run_split, severson_split


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from msenc_lib.data.synthetic import GenerateDataConfig, run_generate_data

    base = tmp_path_factory.mktemp("split")
    run_generate_data(GenerateDataConfig(size="tiny", n_cells=12, last_cycle=12, progress=False), str(base / "u"))
    run_preprocess(PreprocessConfig(progress=False, is_training_shuffled=False, shard_rows=1200), str(base / "u"),
                   str(base / "prep"))
    return base / "prep"


def _split(src, out, split_config=None, **cfg):
    cfg.setdefault("progress", False)
    return run_split(SplitConfig(**cfg), str(src), str(out), split_config_uri=split_config)


def _subset_rows(out: Path, subset: str) -> pa.Table:
    return read_sequence_table(str(out / subset))


def test_generated_split_is_token_weighted_greedy_and_seeded(dataset, tmp_path):
    res = _split(dataset, tmp_path / "a", ratio_train=0.6, ratio_validation=0.2, seed=3)
    cfg_text = (tmp_path / "a" / "split_cfg.json").read_text()
    cfg = json.loads(cfg_text)
    assert list(cfg) == ["train", "validation", "test"] and cfg_text.startswith('{\n    "train": [\n        "')
    assert all(name.endswith(".csv") for names in cfg.values() for name in names)
    # Tokens per cell from the data; the fill follows the original's rule.
    table = read_sequence_table(str(dataset))
    tokens: dict[str, int] = {}
    for k, n in zip(table["cell_key"].to_pylist(), table["n_tokens"].to_pylist()):
        tokens[k] = tokens.get(k, 0) + n
    total = sum(tokens.values())
    train = [c[:-4] for c in cfg["train"]]
    val = [c[:-4] for c in cfg["validation"]]
    assert sum(tokens[c] for c in train) >= 0.6 * total > sum(tokens[c] for c in train[:-1])
    assert sum(tokens[c] for c in val) >= 0.2 * total > sum(tokens[c] for c in val[:-1])
    assert res.weight_unit == "tokens" and res.subsets["train"].weight == sum(tokens[c] for c in train)
    assert sorted(train + val + [c[:-4] for c in cfg["test"]]) == sorted(tokens)
    # Same seed, same split; another seed, another order.
    _split(dataset, tmp_path / "b", ratio_train=0.6, ratio_validation=0.2, seed=3)
    assert (tmp_path / "b" / "split_cfg.json").read_text() == cfg_text
    assert generate_split(tokens, 0.6, 0.2, 4) != generate_split(tokens, 0.6, 0.2, 3)
    # The subsets hold exactly their cells' sequences, unchanged, sorted by cell then cycle.
    for subset, cells in (("train", train), ("validation", val)):
        rows = _subset_rows(tmp_path / "a", subset)
        assert sorted(set(rows["cell_key"].to_pylist())) == sorted(cells)
        keys = list(zip(rows["cell_key"].to_pylist(), rows["cycle_number"].to_pylist()))
        assert keys == sorted(keys)
        src = table.filter(pa.compute.is_in(table["cell_key"], pa.array(cells)))
        assert rows.equals(src)
    assert (tmp_path / "a" / "tokenizer" / "tokenizer.json").exists()
    sub_manifest = json.loads((tmp_path / "a" / "train" / "manifest.json").read_text())
    assert sub_manifest["n_cells"] == len(train) and sub_manifest["mode"] == "embedding"


def test_reusing_a_config_reproduces_the_assignment(dataset, tmp_path):
    _split(dataset, tmp_path / "first", seed=11)
    first = tmp_path / "first"
    _split(dataset, tmp_path / "again", split_config=str(first / "split_cfg.json"), ratio_train=0.1, seed=99)
    again = tmp_path / "again"
    assert (again / "split_cfg.json").read_text() == (first / "split_cfg.json").read_text()
    for subset in ("train", "validation", "test"):
        assert _subset_rows(again, subset).equals(_subset_rows(first, subset))


def test_config_written_by_the_original_is_accepted(dataset, tmp_path):
    cells = sorted(set(read_sequence_table(str(dataset))["cell_key"].to_pylist()))
    original = tmp_path / "split_cfg.json"
    # The original writes json.dump(..., indent=4) of per-cell CSV file names.
    original.write_text(json.dumps({"train": [f"{c}.csv" for c in cells[:8]], "validation": [f"{cells[8]}.csv"],
                                    "test": [f"{c}.csv" for c in cells[9:]]}, indent=4))
    res = _split(dataset, tmp_path / "o", split_config=str(original))
    assert res.assignment.startswith("file:") and res.subsets["validation"].n_cells == 1
    assert read_split_config(str(tmp_path / "o" / "split_cfg.json")) == {
        "train": cells[:8], "validation": [cells[8]], "test": cells[9:]}


def test_unknown_cell_in_config_fails_naming_it(dataset, tmp_path):
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps({"train": ["b1c0.csv", "b9c99.csv"], "validation": [], "test": []}))
    with pytest.raises(InputDataError, match=r"b9c99"):
        _split(dataset, tmp_path / "x", split_config=str(cfg))
    assert not (tmp_path / "x").exists()


def test_unplaced_cells_are_listed_and_left_out(dataset, tmp_path):
    cfg = tmp_path / "partial.json"
    cfg.write_text(json.dumps({"train": ["b1c0.csv"], "validation": [], "test": ["b2c0.csv"]}))
    res = _split(dataset, tmp_path / "p", split_config=str(cfg))
    assert len(res.unplaced_cells) == 10 and "b1c1" in res.unplaced_cells
    assert any("left out" in w for w in res.warnings)
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["unplaced_cells"] == res.unplaced_cells
    assert set(_subset_rows(tmp_path / "p", "train")["cell_key"].to_pylist()) == {"b1c0"}
    empty = _subset_rows(tmp_path / "p", "validation")
    assert empty.num_rows == 0 and "input_ids" in empty.column_names


def test_bad_config_documents(dataset, tmp_path):
    cases = {
        "list.json": "[1, 2]",
        "nokeys.json": '{"foo": []}',
        "twice.json": '{"train": ["b1c0.csv"], "test": ["b1c0.csv"]}',
        "broken.json": '{"train": [',
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError):
            _split(dataset, tmp_path / "out", split_config=str(tmp_path / name))
    with pytest.raises(ConfigError, match="not found"):
        _split(dataset, tmp_path / "out", split_config=str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="ratio_train"):
        SplitConfig.load({"ratio_train": 0.9, "ratio_validation": 0.2})


def test_severson_preset():
    cfg = severson_split()
    assert [len(cfg[k]) for k in ("train", "validation", "test", "secondary_test")] == [41, 0, 43, 40]
    # Index rule: cells 0, 2, ... 82 and 83 -> test, 1, 3, ... 81 -> train, batch 3 -> secondary test.
    assert cfg["test"][:3] == ["b1c0.csv", "b1c2.csv", "b1c4.csv"] and cfg["test"][-1] == "b2c47.csv"
    assert cfg["train"][:3] == ["b1c1.csv", "b1c3.csv", "b1c5.csv"]
    assert cfg["secondary_test"][0] == "b3c0.csv" and "b3c2.csv" not in cfg["secondary_test"]
    everything = [c for v in cfg.values() for c in v]
    assert len(set(everything)) == 124 and not {"b1c8.csv", "b2c7.csv", "b3c37.csv"} & set(everything)


def _embeddings(folder: Path, cells: list[str], cycles: int = 3) -> None:
    folder.mkdir(parents=True)
    n = len(cells) * cycles
    table = pa.table({"cell_key": np.repeat(cells, cycles), "cycle_number": np.tile(np.arange(cycles), len(cells)),
                      "charge_capacity": np.linspace(1, 0.9, n), "val_0": np.arange(n, dtype=float)})
    pq.write_table(table, folder / "embeddings.parquet")
    (folder / "csv").mkdir()
    for c in cells[:3]:
        (folder / "csv" / f"{c}.csv").write_text(f"cell_key,cycle_number,val_0,index\n{c},0,0.5,{c}\n")


def test_severson_preset_on_embeddings(tmp_path):
    cells = sorted({name[:-4] for v in severson_split().values() for name in v})
    _embeddings(tmp_path / "emb", cells)
    res = _split(tmp_path / "emb", tmp_path / "s", preset="severson")
    assert res.input_kind == "embeddings" and res.subsets["secondary_test"].n_cells == 40
    cfg = json.loads((tmp_path / "s" / "split_cfg.json").read_text())
    assert list(cfg) == ["train", "validation", "test", "secondary_test"] and cfg["validation"] == []
    sec = pq.read_table(tmp_path / "s" / "secondary_test" / "embeddings.parquet")
    assert sec.num_rows == 120 and set(sec["cell_key"].to_pylist()) == {n[:-4] for n in cfg["secondary_test"]}
    assert pq.read_table(tmp_path / "s" / "validation" / "embeddings.parquet").num_rows == 0
    # The preset on data without those cells names what is missing.
    _embeddings(tmp_path / "other", ["b1c0", "x1"])
    with pytest.raises(InputDataError, match="b1c1"):
        _split(tmp_path / "other", tmp_path / "t", preset="severson")


def test_embeddings_reuse_the_sequences_split(dataset, tmp_path):
    _split(dataset, tmp_path / "seqsplit", seed=5)
    cells = sorted(set(read_sequence_table(str(dataset))["cell_key"].to_pylist()))
    _embeddings(tmp_path / "emb", cells)
    res = _split(tmp_path / "emb", tmp_path / "embsplit", split_config=str(tmp_path / "seqsplit" / "split_cfg.json"))
    cfg = read_split_config(str(tmp_path / "seqsplit" / "split_cfg.json"))
    for subset in ("train", "validation", "test"):
        t = pq.read_table(tmp_path / "embsplit" / subset / "embeddings.parquet")
        assert set(t["cell_key"].to_pylist()) == set(cfg[subset])
        assert res.subsets[subset].n_rows == 3 * len(cfg[subset])
    copied = sorted(p.name for p in (tmp_path / "embsplit").glob("*/csv/*.csv"))
    assert copied == [f"{c}.csv" for c in cells[:3]]


def test_folder_of_cell_csvs_like_the_original(tmp_path):
    src = tmp_path / "csvs"
    src.mkdir()
    sizes = {}
    for i, c in enumerate(["a1", "a2", "a3", "a4", "a5"]):
        body = "".join(f"{c},{j}\n" for j in range(10 * (i + 1)))
        (src / f"{c}.csv").write_text("cell_key,battery_stream\n" + body)
        sizes[c] = (src / f"{c}.csv").stat().st_size
    (src / "notes.txt").write_text("ignored")
    res = _split(src, tmp_path / "o", ratio_train=0.5, ratio_validation=0.2, seed=1)
    assert res.input_kind == "csv" and res.weight_unit == "bytes"
    assert res.subsets["train"].weight == sum(sizes[c] for c in read_split_config(
        str(tmp_path / "o" / "split_cfg.json"))["train"])
    merged = (tmp_path / "o" / "train.csv").read_text().splitlines()
    assert merged[0] == "cell_key,battery_stream" and merged.count("cell_key,battery_stream") == 1
    train_cells = read_split_config(str(tmp_path / "o" / "split_cfg.json"))["train"]
    assert len(merged) - 1 == sum(10 * (int(c[1])) for c in train_cells)
    assert sorted(p.name for p in (tmp_path / "o" / "train").iterdir()) == sorted(f"{c}.csv" for c in train_cells)


def test_cli_config_alias_reuses_and_stage_config_sets_options(dataset, tmp_path, capsys):
    stage = tmp_path / "stage.yaml"
    stage.write_text("ratio_train: 0.5\nseed: 2\nprogress: false\n")
    assert cli_main(["split", "--input-dir", str(dataset), "--ouput-dir", str(tmp_path / "a"),
                     "--stage-config", str(stage)]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["assignment"] == "generated"
    direct = generate_split({c: w for c, w in _weights(dataset).items()}, 0.5, 0.05, 2)
    assert read_split_config(str(tmp_path / "a" / "split_cfg.json")) == direct
    assert cli_main(["split", "--input-dir", str(dataset), "--output-dir", str(tmp_path / "b"), "--config",
                     str(tmp_path / "a" / "split_cfg.json"), "--merge-files", "true", "--progress", "false"]) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert second["assignment"].startswith("file:") and any("merge-files" in w for w in second["warnings"])
    assert (tmp_path / "b" / "split_cfg.json").read_text() == (tmp_path / "a" / "split_cfg.json").read_text()


def _weights(dataset: Path) -> dict[str, int]:
    t = read_sequence_table(str(dataset))
    out: dict[str, int] = {}
    for k, n in zip(t["cell_key"].to_pylist(), t["n_tokens"].to_pylist()):
        out[k] = out.get(k, 0) + n
    return out


def test_split_on_s3(dataset, tmp_path, s3):
    from msenc_lib import storage

    for p in sorted(dataset.rglob("*")):
        if p.is_file():
            storage.write_bytes(s3.uri("prep", p.relative_to(dataset).as_posix()), p.read_bytes())
    res = run_split(SplitConfig(progress=False, seed=4), s3.uri("prep"), s3.uri("split"))
    _split(dataset, tmp_path / "local", seed=4)
    assert storage.read_text(res.split_config_uri) == (tmp_path / "local" / "split_cfg.json").read_text()
    for subset in ("train", "validation", "test"):
        key = f"split/{subset}/sequences/part-00000.parquet"
        assert storage.read_bytes(s3.uri(key)) == (tmp_path / "local" / subset / "sequences" /
                                                   "part-00000.parquet").read_bytes()
