"""The datasets users bring, end to end: BatteryML-processed and BatteryLife-processed cells and an Arbin export
with its column mapping, mixed in one folder, through ``msenc ingest`` -> ``msenc preprocess`` and through the
pipeline's ``data_source_uri`` (its fingerprint, data and preprocess components under kfp.local)."""

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from battery_files import (ARBIN_MAPPING, arbin_rows, batteryml_cell, hust_protocols, matr_protocols,
                           write_arbin_mits, write_cell, write_labels)
from msenc_cli import main as cli
from msenc_lib.data.schema import METADATA_COLUMNS, UNIFIED_COLUMNS

CELLS = {"MATR_b1c0": "batteryml", "HUST_1-1": "batteryml", "MATR_b2c5": "batterylife", "cell-A7": "arbin"}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """One folder as a user collects it: processed pickles of both projects, BatteryLife's labels, an Arbin
    export and the mapping for it."""
    root = tmp_path_factory.mktemp("raw")
    charge, discharge = matr_protocols()
    write_cell(root / "batteryml", batteryml_cell("MATR_b1c0", seed=1, charge_protocol=charge,
                                                  discharge_protocol=discharge), numpy1=True)
    write_cell(root / "batteryml", batteryml_cell("HUST_1-1", seed=2, temperature=False,
                                                  charge_protocol=hust_protocols()[0]), numpy1=True)
    write_cell(root / "batterylife" / "MATR", batteryml_cell("MATR_b2c5", seed=3, flavour="batterylife",
                                                             charge_protocol=charge, discharge_protocol=discharge),
               numpy1=True)
    write_labels(root / "batterylife" / "Life labels", "MATR", {"MATR_b2c5": 812})
    write_arbin_mits(root / "arbin" / "cell-A7.csv", arbin_rows(n_cycles=3, rows=10, seed=4))
    (root / "msenc-mapping.yaml").write_text(ARBIN_MAPPING)
    return root


def _check_unified(folder: Path) -> pd.DataFrame:
    df = pd.read_parquet(folder)
    assert list(df.columns)[:21] == UNIFIED_COLUMNS + METADATA_COLUMNS
    assert sorted(df.cell_key.unique()) == sorted(CELLS)
    assert df.groupby("cell_key").dataset.first().to_dict() == {"HUST_1-1": "HUST", "MATR_b1c0": "MATR",
                                                               "MATR_b2c5": "MATR", "cell-A7": "my-lab"}
    assert df[df.cell_key == "MATR_b2c5"].cycle_life.unique().tolist() == [812]
    return df


def test_cli_ingest_then_preprocess(raw, tmp_path, capsys):
    unified, pre = tmp_path / "unified", tmp_path / "pre"
    assert cli.main(["ingest", "--input-path", str(raw), "--output-dir", str(unified), "--progress", "false"]) == 0
    printed = capsys.readouterr().out
    assert "batteryml+mapped" in printed
    df = _check_unified(unified)
    manifest = json.loads((unified / "_manifest.json").read_text())
    assert manifest["source"]["format"] == "batteryml+mapped"
    assert "msenc-mapping.yaml" in json.dumps(manifest["source"]["inputs"])  # the mapping is an input too

    assert cli.main(["preprocess", "--input-path", str(unified), "--output-dir", str(pre), "--progress", "false",
                     "--is-training-shuffled", "false", "--text"]) == 0
    seqs = pq.read_table(pre / "sequences").to_pandas()
    want = df.groupby(["cell_key", "cycle_number"]).size()
    assert len(seqs) == len(want)  # one sequence per (cell, cycle), every cell
    assert sorted(seqs.cell_key.unique()) == sorted(CELLS)
    stream = pd.read_csv(pre / "text" / "HUST_1-1.csv").battery_stream
    assert not stream.str.contains("HUST|cylindrical|LFP").any()  # metadata stays out of the text


def test_pipeline_data_source_uri(raw, tmp_path):
    """The pipeline's data path: ``data_source_uri`` -> fingerprint -> data (ingest, format auto) -> preprocess,
    run by kfp.local with the pipeline's own components."""
    from kfp import dsl

    from msenc_components.data.component import build as build_data
    from msenc_components.fingerprint.component import build as build_fingerprint
    from msenc_components.preprocess.component import build as build_preprocess
    from msenc_pipelines.local import run_local
    from msenc_pipelines.pipeline import DEFAULT_EXCLUDED

    fingerprint_op, data_op, preprocess_op = build_fingerprint(), build_data(), build_preprocess()

    @dsl.pipeline(name="msenc-data-path")
    def data_path(data_source_uri: str = "", data_format: str = "auto") -> dsl.Dataset:
        source_hash = fingerprint_op(uri=data_source_uri)
        data = data_op(source_uri=data_source_uri, format=data_format, source_fingerprint=source_hash.output)
        seqs = preprocess_op(unified=data.outputs["unified"], is_training_shuffled=True,
                             exclude_features=DEFAULT_EXCLUDED)
        return seqs.outputs["sequences"]

    result = run_local(data_path, {"data_source_uri": str(raw)}, tmp_path, runner="subprocess")
    runs = sorted(Path(result.pipeline_root).iterdir(), key=lambda p: p.stat().st_mtime)
    tasks = {p.name: p for p in runs[-1].iterdir() if p.is_dir()}
    _check_unified(tasks["data"] / "unified")
    seqs = pq.read_table(Path(result.outputs["Output"]) / "sequences").to_pandas()
    assert sorted(seqs.cell_key) == sorted(CELLS)  # training mode: one sequence per cell
    assert (seqs.n_tokens > 0).all()


def test_ingest_from_s3_recognises_each_file(raw, s3, tmp_path):
    """--format auto on object storage: formats from the objects' first bytes (ranged reads), same table."""
    from msenc_lib import storage
    from msenc_lib.ingest import IngestConfig, run_ingest

    storage.upload_dir(raw, s3.uri("raw"))
    result = run_ingest(IngestConfig(progress=False), s3.uri("raw"), str(tmp_path / "from-s3"))
    assert result.format == "batteryml+mapped"
    run_ingest(IngestConfig(progress=False), str(raw), str(tmp_path / "local"))
    pd.testing.assert_frame_equal(_check_unified(tmp_path / "from-s3"), _check_unified(tmp_path / "local"))
    assert storage.read_head(s3.uri("raw/msenc-mapping.yaml"), 6) == b"format"
