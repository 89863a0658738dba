"""The embed stage on real stage outputs: tiny synthetic data -> embedding-mode sequences -> tiny model."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from msenc_lib.data.synthetic import GenerateDataConfig, run_generate_data
from msenc_lib.embed import EmbedConfig, run_embed
from msenc_lib.errors import InputDataError
from msenc_lib.model import MultiscaleEncoderConfig, MultiscaleEncoderModel
from msenc_lib.preprocess import PreprocessConfig, run_preprocess
from msenc_lib.tokenizer import digit_token_ids, special_token_ids

N_CELLS, LAST_CYCLE = 3, 6


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Unified data, both preprocessing modes and a saved (untrained) tiny model for that tokenizer."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("embed")
    run_generate_data(GenerateDataConfig(size="tiny", seed=0, n_cells=N_CELLS, last_cycle=LAST_CYCLE,
                                         progress=False), str(root / "unified"))
    common = dict(exclude_features=["cycle_life"], progress=False)
    run_preprocess(PreprocessConfig(is_training_shuffled=False, **common), str(root / "unified"), str(root / "emb"))
    run_preprocess(PreprocessConfig(is_training_shuffled=True, **common), str(root / "unified"), str(root / "train"))
    tok = AutoTokenizer.from_pretrained(root / "emb" / "tokenizer")
    ids = special_token_ids(tok)
    # a small context (256 tokens) so every cycle is cut into several chunks
    cfg = MultiscaleEncoderConfig.from_preset("tiny", seq_lens=[16, 4, 4], vocab_size=len(tok),
                                              pad_token_id=ids["pad"], mask_token_id=ids["mask"],
                                              digit_token_ids=digit_token_ids(tok))
    torch.manual_seed(0)
    MultiscaleEncoderModel(cfg).save_pretrained(root / "model")
    return root


def _embed(root, out, **cfg):
    cfg.setdefault("bf16", False)  # float32 unless a test asks: the exact comparisons need it
    return run_embed(EmbedConfig(progress=False, **cfg), str(root / "emb"), str(root / "model"),
                     str(root / "unified"), str(out))


def test_one_row_per_cell_and_cycle_with_targets(inputs, tmp_path):
    result = _embed(inputs, tmp_path / "out", csv=True)
    table = pd.read_parquet(tmp_path / "out" / "embeddings.parquet")
    unified = pd.read_parquet(inputs / "unified")
    pairs = unified[["cell_key", "cycle_number"]].drop_duplicates()
    assert result.n_rows == len(table) == len(pairs) == N_CELLS * (LAST_CYCLE + 1)
    assert result.n_chunks > result.n_rows  # cycles longer than the 256-token context were chunked
    val = [f"val_{i}" for i in range(32)]
    assert list(table.columns) == ["cell_key", "cycle_number", "charge_policy_Q1", "charge_policy_Q2",
                                   "charge_policy_Q3", "charge_policy_Q4", "charge_capacity", *val]
    assert not table.isna().any().any()
    expected = unified.groupby(["cell_key", "cycle_number"])["charge_capacity"].max().reset_index()
    merged = table.merge(expected, on=["cell_key", "cycle_number"], suffixes=("", "_u"))
    assert np.allclose(merged["charge_capacity"], merged["charge_capacity_u"])
    # the original per-cell CSV layout, with the trailing index column
    cell = table["cell_key"].iloc[0]
    csv = pd.read_csv(tmp_path / "out" / "csv" / f"{cell}.csv")
    assert list(csv.columns) == list(table.columns) + ["index"] and (csv["index"] == cell).all()


def test_vectors_do_not_depend_on_batching_or_padding(inputs, tmp_path):
    """Batch budget 256 = every chunk alone (no padding); 1M = many chunks of different lengths padded together."""
    alone = pd.read_parquet(_embed(inputs, tmp_path / "a", batch_tokens=256).output_uri + "/embeddings.parquet")
    batched = pd.read_parquet(_embed(inputs, tmp_path / "b", batch_tokens=1_000_000).output_uri + "/embeddings.parquet")
    val = [c for c in alone.columns if c.startswith("val_")]
    assert np.abs(alone[val].to_numpy() - batched[val].to_numpy()).max() < 1e-5


def test_mean_pooling_is_over_real_tokens_only(inputs, tmp_path):
    from transformers import AutoModel

    table = pd.read_parquet(_embed(inputs, tmp_path / "m").output_uri + "/embeddings.parquet")
    seqs = pd.read_parquet(inputs / "emb" / "sequences")
    row = seqs.iloc[1]
    model = AutoModel.from_pretrained(inputs / "model").eval()
    ids = torch.tensor(np.asarray(row["input_ids"], dtype=np.int64))
    with torch.inference_mode():  # chunk by hand at the same boundaries, weight chunks by their token counts
        from msenc_lib.embed import chunk_sequence

        pieces = chunk_sequence(ids.numpy(), model.config.max_context, 3)
        total = sum(model(torch.as_tensor(p)[None]).last_hidden_state[0].double().sum(0) for p in pieces)
    expected = (total / len(ids)).numpy()
    got = table[(table.cell_key == row["cell_key"]) & (table.cycle_number == row["cycle_number"])]
    assert np.allclose(got[[f"val_{i}" for i in range(32)]].to_numpy()[0], expected, atol=1e-5)


def test_max_and_first_pooling(inputs, tmp_path):
    mean = pd.read_parquet(_embed(inputs, tmp_path / "mean").output_uri + "/embeddings.parquet")
    mx = pd.read_parquet(_embed(inputs, tmp_path / "max", pooling="max").output_uri + "/embeddings.parquet")
    val = [c for c in mean.columns if c.startswith("val_")]
    assert (mx[val].to_numpy() >= mean[val].to_numpy() - 1e-6).all()
    first = _embed(inputs, tmp_path / "first", pooling="first")
    assert first.n_rows == len(mean)


def test_bad_inputs(inputs, tmp_path):
    with pytest.raises(InputDataError, match="training"):
        run_embed(EmbedConfig(progress=False), str(inputs / "train"), str(inputs / "model"),
                  str(inputs / "unified"), str(tmp_path / "x1"))
    with pytest.raises(InputDataError, match="absent from the unified data"):
        _embed(inputs, tmp_path / "x2", targets=["charge_capacity", "state_of_health"])
    # a model trained with another vocabulary
    cfg = json.loads((inputs / "model" / "config.json").read_text())
    MultiscaleEncoderModel(MultiscaleEncoderConfig.from_preset(
        "tiny", seq_lens=cfg["seq_lens"], vocab_size=cfg["vocab_size"] + 5,
        pad_token_id=cfg["pad_token_id"])).save_pretrained(tmp_path / "other_model")
    with pytest.raises(InputDataError, match="does not match the dataset's tokenizer"):
        run_embed(EmbedConfig(progress=False), str(inputs / "emb"), str(tmp_path / "other_model"),
                  str(inputs / "unified"), str(tmp_path / "x3"))
    with pytest.raises(InputDataError, match="not a saved model"):
        run_embed(EmbedConfig(progress=False), str(inputs / "emb"), str(tmp_path), str(inputs / "unified"),
                  str(tmp_path / "x4"))
    for name in ("x1", "x2", "x3", "x4"):
        assert not (tmp_path / name).exists()  # nothing half-written


def test_cli_and_s3(inputs, tmp_path, s3):
    from msenc_lib import storage

    with storage.publish(s3.uri("model")) as staging:
        for f in (inputs / "model").iterdir():
            (staging / f.name).write_bytes(f.read_bytes())
    out = subprocess.run(
        [sys.executable, "-m", "msenc_cli", "embed", "--data-dir", str(inputs / "emb"), "--model-dir", s3.uri("model"),
         "--unified-dir", str(inputs / "unified"), "--output-dir", s3.uri("emb-out"), "--targets", "charge_capacity",
         "--aggregation", "mean", "--name-id", "cell_key", "--time-id", "cycle_number", "--no-progress"],
        capture_output=True, text=True)  # the original embedd CLI's option names
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["n_rows"] == N_CELLS * (LAST_CYCLE + 1)
    assert "emb-out/embeddings.parquet" in s3.keys("emb-out")


def test_streamed_shard_by_shard_in_cell_order(inputs, tmp_path):
    """A dataset of several shards is embedded and written one shard at a time (one Parquet row group each); the
    file is still sorted by (cell, cycle) and holds the vectors of the single-shard dataset."""
    import pyarrow.parquet as pq

    run_preprocess(PreprocessConfig(is_training_shuffled=False, exclude_features=["cycle_life"], progress=False,
                                    shard_rows=1), str(inputs / "unified"), str(tmp_path / "emb-shards"))
    shards = sorted((tmp_path / "emb-shards" / "sequences").glob("*.parquet"))
    assert len(shards) == N_CELLS  # whole cells per shard: one cell each here
    result = run_embed(EmbedConfig(progress=False, csv=True, bf16=False), str(tmp_path / "emb-shards"),
                       str(inputs / "model"), str(inputs / "unified"), str(tmp_path / "out"))
    streamed = pq.ParquetFile(tmp_path / "out" / "embeddings.parquet")
    assert streamed.metadata.num_row_groups == N_CELLS and result.n_rows == streamed.metadata.num_rows
    table = streamed.read().to_pandas()
    assert table[["cell_key", "cycle_number"]].equals(
        table[["cell_key", "cycle_number"]].sort_values(["cell_key", "cycle_number"]).reset_index(drop=True))
    whole = pd.read_parquet(_embed(inputs, tmp_path / "whole").output_uri + "/embeddings.parquet")
    val = [c for c in whole.columns if c.startswith("val_")]
    assert np.abs(whole[val].to_numpy() - table[val].to_numpy()).max() < 1e-5
    for cell, group in table.groupby("cell_key"):  # each cell's CSV once, with its header once
        csv = pd.read_csv(tmp_path / "out" / "csv" / f"{cell}.csv")
        assert len(csv) == len(group) and list(csv.columns) == list(table.columns) + ["index"]


def test_bf16_inference_where_native_stays_close_to_float32(inputs, tmp_path):
    """bf16 autocast (the default where bf16 is native) against float32: every vector within 1% of its norm."""
    from msenc_lib.model.hardware import native_bf16

    fp32 = _embed(inputs, tmp_path / "fp32", bf16=False)
    auto = _embed(inputs, tmp_path / "auto", bf16=True)  # the default: bf16 where native
    assert EmbedConfig().bf16 and fp32.precision == "fp32"
    assert auto.precision == ("bf16" if native_bf16("cpu") else "fp32")
    a = pd.read_parquet(fp32.output_uri + "/embeddings.parquet")
    b = pd.read_parquet(auto.output_uri + "/embeddings.parquet")
    val = [c for c in a.columns if c.startswith("val_")]
    x, y = a[val].to_numpy(), b[val].to_numpy()
    error = np.linalg.norm(x - y, axis=1) / np.linalg.norm(x, axis=1)
    assert error.max() < 0.01, error.max()
    if auto.precision == "bf16":
        assert error.max() > 0  # it did run in bf16
