"""``msenc evaluate --finetune``: the finetuned/lstm row on real stage outputs (tiny synthetic data -> embedding-
mode sequences -> a tiny model trained a few steps -> embeddings), and its bad inputs."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from msenc_cli import main as cli
from msenc_lib.errors import EXIT_CONFIG, EXIT_INPUT, ConfigError, InputDataError
from msenc_lib.evaluate import EvaluateConfig, run_evaluate

N_CELLS, LAST_CYCLE, FIRST = 8, 30, 20
ROWS = ["none/dummy", "embedding_seq/lstm"]
FAST = dict(tasks=["cycle_life"], first_cycles=FIRST, rows=ROWS, seeds=2, seq_epochs=40, finetune=True,
            finetune_epochs=2, plots=False, progress=False)


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """unified -> embedding- and training-mode sequences -> split (5/2/1 cells) -> tiny model (4 steps) -> embeddings.
    The tiny model's context (1024 tokens) is shorter than a cycle (~2500 tokens): cycles are chunked."""
    root = tmp_path_factory.mktemp("finetune")
    quiet = ["--progress", "false"]
    steps = [
        ["generate-data", "--size", "tiny", "--n-cells", str(N_CELLS), "--last-cycle", str(LAST_CYCLE),
         "--output-dir", str(root / "unified")],
        ["preprocess", "--input", str(root / "unified"), "--output-dir", str(root / "seqs"),
         "--is-training-shuffled", "false", "--exclude-features", "cycle_life"],
        ["preprocess", "--input", str(root / "unified"), "--output-dir", str(root / "train_seqs"),
         "--exclude-features", "cycle_life"],
        ["split", "--input", str(root / "train_seqs"), "--output-dir", str(root / "split"), "--ratio-train", "0.6",
         "--ratio-validation", "0.2"],
        ["train", "--preset", "tiny", "--data-dir", str(root / "split"), "--output-dir", str(root / "model"),
         "--max-steps", "4", "--eval-every", "0", "--save-every", "0", "--precision", "fp32"],
        ["embed", "--data-dir", str(root / "seqs"), "--model-dir", str(root / "model"), "--unified-dir",
         str(root / "unified"), "--output-dir", str(root / "emb"), "--bf16", "false"],
    ]
    for argv in steps:
        assert cli.main([*argv, *quiet]) == 0, argv
    return root


def _run(root, out, model=None, sequences=None, **cfg):
    return run_evaluate(EvaluateConfig(**{**FAST, **cfg}), str(root / "emb"), str(root / "unified"),
                        str(root / "split"), str(out), model_uri=str(model or root / "model"),
                        sequences_uri=str(sequences or root / "seqs"))


def _rows(doc: dict) -> dict[str, dict]:
    return {f"{r['feature_set']}/{r['model']}": r for r in doc["tasks"]["cycle_life"]["results"]}


def _digests(folder) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_finetuned_row_in_metrics_and_report_deterministic_model_untouched(stages, tmp_path):
    before = _digests(stages / "model")
    _run(stages, tmp_path / "a")
    doc = json.loads((tmp_path / "a" / "metrics.json").read_text())
    rows = _rows(doc)
    assert list(rows) == [*ROWS, "finetuned/lstm"]  # after the embedding heads
    ft = rows["finetuned/lstm"]
    assert ft["n_features"] == 32 and len(ft["hyperparameters"]) == 2
    for subset in ("train", "validation", "test"):
        m = ft["subsets"][subset]
        assert np.isfinite(m["rmse"]) and np.isfinite(m["rmse_std"]) and m["rmse"] > 0
        assert len(ft["per_seed"][subset]["rmse"]) == 2
    hp = ft["hyperparameters"][0]
    assert hp["cycles_per_cell"] == FIRST // 10 and hp["pooling"] == "mean" and 0 <= hp["best_epoch"] <= 2
    assert len(hp["validation_rmse_log10"]) == hp["epochs_run"] + 1
    assert doc["tasks"]["cycle_life"]["finetune"]["pooling"] == "mean"
    assert doc["inputs"]["model"] == str(stages / "model")
    assert "cycle_life/test/finetuned/lstm/rmse" in doc["headline"]
    assert "| finetuned/lstm |" in (tmp_path / "a" / "summary.md").read_text()
    assert 'data-row="finetuned/lstm"' in (tmp_path / "a" / "report.html").read_text()
    assert "finetuned/lstm" in pd.read_csv(tmp_path / "a" / "predictions_cycle_life.csv").columns

    _run(stages, tmp_path / "b")  # same seed, same numbers
    again = _rows(json.loads((tmp_path / "b" / "metrics.json").read_text()))["finetuned/lstm"]
    assert again["per_seed"] == ft["per_seed"] and again["hyperparameters"] == ft["hyperparameters"]
    assert _digests(stages / "model") == before


def test_finetuning_trains_the_encoder(stages, tmp_path):
    """Without early stopping the last epoch predicts; an encoder learning rate of ~0 leaves the encoder as it was,
    so its predictions differ from a real fine-tune only if the encoder's weights moved."""
    def preds(out, lr):
        cfg = EvaluateConfig(**{**FAST, "seeds": 1, "finetune_lr": lr, "rows": ["none/dummy"],
                                "finetune_early_stopping": False})
        run_evaluate(cfg, str(stages / "emb"), str(stages / "unified"), str(stages / "split"), str(out),
                     model_uri=str(stages / "model"), sequences_uri=str(stages / "seqs"))
        hp = _rows(json.loads((out / "metrics.json").read_text()))["finetuned/lstm"]["hyperparameters"][0]
        assert hp["best_epoch"] == hp["epochs_run"] == 2 and not hp["early_stopping"]
        return pd.read_csv(out / "predictions_cycle_life.csv")["finetuned/lstm"].to_numpy()

    frozen, tuned = preds(tmp_path / "frozen", 1e-12), preds(tmp_path / "tuned", 3e-3)
    assert np.abs(tuned - frozen).max() > 1.0  # cycles


def test_pooling_matches_embed_and_gradients_reach_the_encoder(stages, tmp_path):
    from msenc_lib.evaluate.finetune import FineTuner, embeddings_pooling

    assert embeddings_pooling(str(stages / "emb")) == "mean"
    shutil.copytree(stages / "emb", tmp_path / "emb")
    recorded = tmp_path / "emb" / "embed_config.yaml"
    recorded.write_text(recorded.read_text().replace("pooling: mean", "pooling: max"))
    assert embeddings_pooling(str(tmp_path / "emb" / "embeddings.parquet")) == "max"
    assert embeddings_pooling(str(tmp_path)) is None

    cfg = EvaluateConfig(**FAST)
    tuner = FineTuner(cfg, str(stages / "model"), str(stages / "seqs"), ["b1c0"], FIRST, None)
    cell = tuner.cells["b1c0"]
    with torch.no_grad():
        vecs = tuner.encode(tuner.model, cell.ids).numpy()
    emb = pd.read_parquet(stages / "emb" / "embeddings.parquet")
    emb = emb[emb["cell_key"] == "b1c0"].set_index("cycle_number")
    expect = emb.loc[cell.cycles, [f"val_{i}" for i in range(32)]].to_numpy()
    assert len(cell.cycles) == FIRST // 10 and np.allclose(vecs, expect, atol=1e-5)

    tuner.encode(tuner.model, cell.ids).pow(2).sum().backward()
    grads = [p.grad for p in tuner.model.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0


def test_finetune_needs_the_model_and_the_sequences(stages, tmp_path, capsys):
    base = ["evaluate", "--embeddings-dir", str(stages / "emb"), "--unified-dir", str(stages / "unified"),
            "--split-config", str(stages / "split"), "--tasks", "cycle_life", "--first-cycles", str(FIRST),
            "--rows", "none/dummy", "--seeds", "1", "--plots", "false", "--progress", "false", "--finetune"]
    no_model = ["--output-dir", str(tmp_path / "a"), "--sequences-dir", str(stages / "seqs")]
    assert cli.main([*base, *no_model]) == EXIT_CONFIG
    assert "--model-dir" in capsys.readouterr().err
    assert cli.main([*base, "--output-dir", str(tmp_path / "b"), "--model", str(stages / "model")]) == EXIT_CONFIG
    assert "--sequences-dir" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(ConfigError, match="finetune needs"):
        run_evaluate(EvaluateConfig(**FAST), str(stages / "emb"), str(stages / "unified"), str(stages / "split"),
                     str(tmp_path / "c"))
    with pytest.raises(ValueError, match="needs finetune"):
        EvaluateConfig(rows=["finetuned/lstm"])
    with pytest.raises(ValueError, match="cycle_life"):
        EvaluateConfig(finetune=True, tasks=["capacity"])
    with pytest.raises(ValueError, match="rows"):
        EvaluateConfig(finetune=True, curve_rows=["finetuned/lstm"])

    assert cli.main([*base, "--output-dir", str(tmp_path / "d"), "--model-dir", str(stages / "model"),
                     "--sequences-dir", str(stages / "seqs"), "--finetune-epochs", "1", "--seq-epochs", "5"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "cycle_life/test/finetuned/lstm/rmse" in result["headline"]


def test_bad_model_and_sequences(stages, tmp_path, capsys):
    from msenc_lib.model import MultiscaleEncoderConfig, MultiscaleEncoderModel

    other = tmp_path / "other_model"  # a model of another vocabulary
    MultiscaleEncoderModel(MultiscaleEncoderConfig.from_preset("tiny", vocab_size=40)).save_pretrained(other)
    with pytest.raises(InputDataError, match="vocabulary"):
        _run(stages, tmp_path / "o1", model=other)
    with pytest.raises(InputDataError, match="not a saved model"):
        _run(stages, tmp_path / "o2", model=stages / "seqs")
    with pytest.raises(InputDataError, match="preprocessed in 'training' mode"):
        _run(stages, tmp_path / "o3", sequences=stages / "train_seqs")

    # the sequences of one cell missing
    split = json.loads((stages / "split" / "split_cfg.json").read_text())
    gone = split["test"][0].removesuffix(".csv")
    fewer = tmp_path / "fewer"
    shutil.copytree(stages / "seqs", fewer)
    for shard in (fewer / "sequences").glob("*.parquet"):
        table = pd.read_parquet(shard)
        table[table["cell_key"] != gone].to_parquet(shard, index=False)
    with pytest.raises(InputDataError, match=f"lack 1 cell.*{gone}"):
        _run(stages, tmp_path / "o4", sequences=fewer)

    # no sequence in the cycles a row reads: cycles 1..10 dropped for every cell
    early = tmp_path / "early"
    shutil.copytree(stages / "seqs", early)
    for shard in (early / "sequences").glob("*.parquet"):
        table = pd.read_parquet(shard)
        table[table["cycle_number"] > 10].to_parquet(shard, index=False)
    argv = ["evaluate", "--embeddings-dir", str(stages / "emb"), "--unified-dir", str(stages / "unified"),
            "--split-config", str(stages / "split"), "--output-dir", str(tmp_path / "o5"), "--tasks", "cycle_life",
            "--first-cycles", str(FIRST), "--rows", "none/dummy", "--seeds", "1", "--plots", "false",
            "--progress", "false", "--finetune", "--model-dir", str(stages / "model"), "--sequences-dir", str(early)]
    assert cli.main(argv) == EXIT_INPUT
    err = capsys.readouterr().err
    assert "no usable row left" in err and "no token sequence of cycles 1..10" in err
    assert not (tmp_path / "o5").exists()

    with pytest.raises(ConfigError, match="finetune_pooling 'median'"):
        _run(stages, tmp_path / "o6", finetune_pooling="median")
