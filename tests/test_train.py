"""Training stage (issue 5 item 3): windows, the CLI run, loss fall, resume, DDP equality, s3 + the
Training Operator's env, bad inputs. Everything runs on the tiny battery data and the tiny preset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from processes import free_port, run_to_completion
from safetensors.torch import load_file

import msenc_lib.model  # noqa: F401  (registers the model with transformers' Auto* classes)
from msenc_cli.main import main as cli_main
from msenc_lib import storage
from msenc_lib.errors import ConfigError, InputDataError, StorageError
from msenc_lib.layout import read_metrics_log
from msenc_lib.train import TrainConfig, run_train

REPO = Path(__file__).resolve().parents[1]
# small, fast runs: 256-token windows, no progress bar, frequent logging; float32 (the exact-equality tests compare
# runs whose batch shapes differ, which bf16 rounds differently; the bf16 path has its own test)
FAST = dict(preset="tiny", context_length=256, progress=False, log_every=2, eval_every=0, save_every=0,
            eval_max_windows=8, precision="fp32")


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory) -> Path:
    """The tiny synthetic battery data (6 cells, cycles 0..3) -> training sequences -> 4/2/0 cell split."""
    root = tmp_path_factory.mktemp("train-data")
    quiet = ["--progress", "false"]
    assert cli_main(["generate-data", "--size", "tiny", "--n-cells", "6", "--last-cycle", "3",
                     "--output-dir", str(root / "unified"), *quiet]) == 0
    assert cli_main(["preprocess", "--input", str(root / "unified"), "--output-dir", str(root / "pre"), *quiet]) == 0
    assert cli_main(["split", "--input", str(root / "pre"), "--output-dir", str(root / "split"),
                     "--ratio-train", "0.6", "--ratio-validation", "0.2", *quiet]) == 0
    return root / "split"


def cfg(**over) -> TrainConfig:
    return TrainConfig.load({**FAST, **over}, environ={})


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MSENC_", "WORLD_SIZE", "RANK", "LOCAL_RANK"))}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)
    return env


def last_weights(output: str) -> dict[str, torch.Tensor]:
    """The weights after the last step (the final checkpoint's model), not the best-by-eval ones."""
    from msenc_lib.train.checkpoint import latest_checkpoint, load_checkpoint

    state, _ = load_checkpoint(latest_checkpoint(output))
    return state["model"]


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]


# ------------------------------------------------------------------------------------------ windows
def test_windows_start_at_time_step_boundaries_deterministically(split_dir):
    from msenc_lib.model.masking import MaskingSpec
    from msenc_lib.train.data import WindowDataset, read_sequences
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(split_dir / "tokenizer"))
    sep, pad = tok.sep_token_id, tok.pad_token_id
    cells = read_sequences(split_dir / "train" / "sequences", sep)
    assert len(cells) == 4 and all(len(c.ids) > 5000 for c in cells)
    spec = MaskingSpec.create(tok.mask_token_id, tok.all_special_ids, len(tok))
    ctx = 1000
    data = WindowDataset(cells, ctx, spec, seed=3, pad_token_id=pad)
    assert data.windows_per_epoch == sum(len(c.ids) // ctx for c in cells)
    for epoch in range(3):
        plan = data.epoch_plan(epoch)
        assert len(plan) == data.windows_per_epoch
        for ci, start in plan:
            ids = cells[ci].ids
            assert start == 0 or ids[start - 1] == sep, "a window starts inside a time step"
            assert 0 <= start < len(ids)
        assert sorted(plan) != plan  # shuffled
    # the seed decides the plan and the masking; the same seed gives the same samples
    again = WindowDataset(cells, ctx, spec, seed=3, pad_token_id=pad)
    other = WindowDataset(cells, ctx, spec, seed=4, pad_token_id=pad)
    assert again.epoch_plan(1) == data.epoch_plan(1) != other.epoch_plan(1)
    for g in (0, 7, data.windows_per_epoch + 2):
        a, b = data.sample(g), again.sample(g)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    ids, attention, labels = data.sample(5)
    picked = labels != -100
    window = data.window(5)[0]
    n_candidates = int((~torch.isin(window, torch.tensor(spec.special_token_ids))).sum())
    assert int(picked.sum()) == round(0.15 * n_candidates)
    assert not torch.isin(labels[picked], torch.tensor(spec.special_token_ids)).any()
    # a cell shorter than the context: one padded window, padding never masked
    short = WindowDataset(cells[:1], len(cells[0].ids) + 100, spec, seed=0, pad_token_id=pad)
    ids, attention, labels = short.sample(0)
    assert short.windows_per_epoch == 1 and int(attention.sum()) == len(cells[0].ids)
    assert (ids[attention == 0] == pad).all() and (labels[attention == 0] == -100).all()


@pytest.mark.slow
# ----------------------------------------------------------------------------------------- the CLI
def test_cli_40_steps_saves_a_model_that_auto_model_loads(split_dir, tmp_path):
    out = tmp_path / "model"
    proc = subprocess.run([sys.executable, "-m", "msenc_cli", "train", "--preset", "tiny", "--data-dir",
                           str(split_dir), "--output-dir", str(out), "--max-steps", "40", "--progress", "false",
                           "--eval-every", "20"], env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["completed"] and result["steps"] == 40 and result["n_parameters"] > 100_000
    assert np.isfinite(result["final_loss"]) and result["best_step"] in (20, 40)
    assert "parameters" in proc.stderr  # the parameter count is logged

    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    model = AutoModel.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    assert model.config.vocab_size == len(tok) and (out / "model.safetensors").exists()
    ids = torch.tensor([tok("1.5,2.0<|sep|>3.25,4", add_special_tokens=False)["input_ids"]])
    assert model(ids).last_hidden_state.shape == (1, ids.shape[1], model.config.hidden_sizes[-1])
    # the saved weights are the best-by-eval-loss ones
    best = AutoModelForMaskedLM.from_pretrained(out).state_dict()
    rows = read_metrics_log(str(out))
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in evals] == [20, 40] and result["best_eval_loss"] == min(r["eval_loss"] for r in evals)
    if result["best_step"] == 40:
        assert all(torch.equal(best[k], v) for k, v in last_weights(str(out)).items())
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(10, 41, 10))
    assert all({"loss", "ce", "ntl", "lr", "tokens_per_s"} <= set(r) for r in train_rows)
    assert TrainConfig.load(str(out / "train_config.yaml")).max_steps == 40
    # python -m msenc_cli train is the same command (the PyTorchJob pod's)
    helped = subprocess.run([sys.executable, "-m", "msenc_cli", "train", "--help"], env=child_env(),
                            capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "--resume" in helped.stdout and "--init-model" in helped.stdout


@pytest.mark.slow
def test_masked_lm_loss_falls_30_percent_within_200_steps(split_dir, tmp_path):
    # the tiny preset's whole context (1024 tokens), 4 windows a step
    result = run_train(cfg(max_steps=200, context_length=None, batch_size=4, log_every=10, eval_every=100,
                           early_stopping_patience=0), str(split_dir), str(tmp_path / "m"))
    rows = [r for r in read_metrics_log(str(tmp_path / "m")) if "loss" in r]
    first, last = rows[0]["loss"], rows[-1]["loss"]
    assert result.steps == 200 and last <= 0.7 * first, (first, last)
    evals = [r["eval_loss"] for r in read_metrics_log(str(tmp_path / "m")) if "eval_loss" in r]
    assert evals[-1] < evals[0]


# ------------------------------------------------------------------------------------------- resume
def test_resume_continues_exactly_like_an_uninterrupted_run(split_dir, tmp_path):
    common = dict(max_steps=16, eval_every=4, save_every=6, save_total_limit=1, log_every=3, batch_size=2,
                  grad_accum_steps=2, seed=5)
    straight = run_train(cfg(**common), str(split_dir), str(tmp_path / "straight"))

    out = str(tmp_path / "resumed")
    stopped = run_train(cfg(**common, stop_after=8), str(split_dir), out)
    assert not stopped.completed and stopped.steps == 8
    assert not (tmp_path / "resumed" / "config.json").exists()  # no final model from an interrupted run
    assert sorted(os.listdir(tmp_path / "resumed" / "checkpoints")) == ["LATEST", "step-00000008"]
    resumed = run_train(cfg(**common, resume=True), str(split_dir), out)
    assert resumed.completed and resumed.steps == 16 and resumed.resumed_from_step == 8

    for name in ("straight", "resumed"):  # the best model and the last weights
        assert (tmp_path / name / "model.safetensors").exists()
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la, lb = last_weights(str(tmp_path / "straight")), last_weights(out)
    assert all(torch.equal(la[k], lb[k]) for k in la)
    assert without_timing(read_metrics_log(str(tmp_path / "straight"))) == without_timing(read_metrics_log(out))
    assert (straight.final_loss, straight.best_eval_loss, straight.best_step) == (
        resumed.final_loss, resumed.best_eval_loss, resumed.best_step)


# --------------------------------------------------------------------------------------------- DDP
# 4 steps, global batch 4 windows. No clipping here: it would bring a wrongly scaled gradient back to norm 1.
DDP_STEPS = dict(max_steps=4, eval_every=2, log_every=1, grad_accum_steps=2, seed=1, early_stopping_patience=0,
                 max_grad_norm=0)


@pytest.fixture(scope="module")
def single_process_run(split_dir, tmp_path_factory):
    """1 process x batch 2 x 2 accumulation steps, with the gradients it applies at every step."""
    from grad_capture import capture_gradients, load_gradients

    root = tmp_path_factory.mktemp("single")
    handle = capture_gradients(root)
    try:
        result = run_train(cfg(batch_size=2, **DDP_STEPS), str(split_dir), str(root / "model"))
    finally:
        handle.remove()
    return result, root / "model", load_gradients(root)


def run_ddp(split_dir: Path, tmp_path: Path, launcher: str, grad_scale: float = 1.0):
    """2 gloo ranks x batch 1 x 2 accumulation steps, with the Training Operator's env (MASTER_ADDR,
    MASTER_PORT, WORLD_SIZE, RANK, no LOCAL_RANK) or started by torchrun: (their result lines, the output
    folder, the gradients each rank applied)."""
    from grad_capture import load_gradients

    out, grads = tmp_path / "ddp", tmp_path / "grads"
    grads.mkdir()
    config_file = tmp_path / "ddp.yaml"
    cfg(batch_size=1, **DDP_STEPS).save(str(config_file))
    port = str(free_port())
    args = [str(REPO / "tests" / "grad_capture.py"), "--data-dir", str(split_dir), "--output-dir", str(out),
            "--config", str(config_file)]
    extra = dict(GRADS_DIR=str(grads), GRAD_SCALE=str(grad_scale))
    if launcher == "torchrun":
        commands = [([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
                      f"--master-port={port}", *args], child_env(**extra))]
    else:
        commands = [([sys.executable, *args], child_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE="2",
                                                        RANK=str(r), **extra)) for r in range(2)]
    outputs = run_to_completion(commands)
    # under torchrun both ranks share one stdout, so their result lines may run together: decode each object
    decoder, marker = json.JSONDecoder(), '{"output_uri"'
    results = [decoder.raw_decode(text, i)[0] for text in (o[0] for o in outputs)
               for i in [j for j in range(len(text)) if text.startswith(marker, j)]]
    return results, out, [load_gradients(grads, rank) for rank in range(2)]


def worst_weight_difference(a: str, b: str) -> float:
    la, lb = last_weights(a), last_weights(b)
    return max(float((la[k] - lb[k]).abs().max()) for k in la)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["operator-env", "torchrun"])
def test_two_ddp_processes_match_one_process_on_the_same_global_batch(split_dir, tmp_path, launcher,
                                                                      single_process_run):
    """The gradients each rank applies equal the single process's at every step, hence the weights, the
    metrics and the early-stopping state too."""
    from grad_capture import worst_gradient_difference

    single, single_out, single_grads = single_process_run
    results, out, (grads0, grads1) = run_ddp(split_dir, tmp_path, launcher)
    assert len(results) == 2 and all(r["world_size"] == 2 and r["global_batch_windows"] == 4 for r in results)
    assert single.global_batch_windows == 4
    assert len(grads0) == len(single_grads) == 4
    assert worst_gradient_difference(grads0, single_grads) < 1e-4
    assert worst_gradient_difference(grads1, grads0) == 0  # the ranks apply the same all-reduced gradient

    assert worst_weight_difference(str(single_out), str(out)) < 1e-5
    from transformers import AutoTokenizer

    from msenc_lib.train.stage import _build_model

    la = last_weights(str(single_out))
    initial = _build_model(cfg(seed=1), AutoTokenizer.from_pretrained(str(split_dir / "tokenizer"))).state_dict()
    assert max(float((la[k] - initial[k]).abs().max()) for k in la) > 1e-3  # the 4 steps did move the weights
    rows_a, rows_b = without_timing(read_metrics_log(str(single_out))), without_timing(read_metrics_log(str(out)))
    assert [sorted(r) for r in rows_a] == [sorted(r) for r in rows_b]
    for ra, rb in zip(rows_a, rows_b):
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], rel=1e-5, abs=1e-6), (k, ra, rb)
    assert results[0]["best_eval_loss"] == pytest.approx(single.best_eval_loss, rel=1e-5)
    assert results[0]["best_eval_loss"] == results[1]["best_eval_loss"]  # the ranks agree (early stopping)


@pytest.mark.slow
def test_a_wrong_global_gradient_scale_fails_the_gradient_check(split_dir, tmp_path, single_process_run):
    """Ranks that apply twice the global gradient (as when per-rank gradients are summed, not averaged). AdamW
    divides each update by the gradient's running RMS, so such a bug moves the weights only through its
    epsilon (by ~1e-4 here, against ~1e-3 of movement: a weight tolerance would have to be tuned to see it);
    the gradient comparison sees the factor itself."""
    from grad_capture import worst_gradient_difference

    _, _, single_grads = single_process_run
    _, _, (grads0, _) = run_ddp(split_dir, tmp_path, "operator-env", grad_scale=2.0)
    assert worst_gradient_difference(grads0, single_grads) == pytest.approx(1.0, rel=1e-3)


# ----------------------------------------------------------------------- s3 and the operator's env
def test_s3_data_and_output_with_checkpoint_pruning_and_resume(split_dir, s3):
    storage.copy_tree(str(split_dir), s3.uri("split"))
    out = s3.uri("models", "m1")
    common = dict(max_steps=6, save_every=2, save_total_limit=2, eval_every=3)
    stopped = run_train(cfg(**common, stop_after=5), s3.uri("split"), out)
    assert not stopped.completed
    ckpts = {k.split("/")[3] for k in s3.keys("models/m1/checkpoints/") if "/step-" in k}
    assert ckpts == {"step-00000004", "step-00000005"}  # the last 2 kept
    result = run_train(cfg(**common, resume=True), s3.uri("split"), out)
    assert result.completed and result.resumed_from_step == 5
    keys = s3.keys("models/m1/")
    for name in ("config.json", "model.safetensors", "tokenizer/tokenizer.json", "train_config.yaml", "metrics.jsonl"):
        assert f"models/m1/{name}" in keys
    assert [r["step"] for r in read_metrics_log(out) if "loss" in r] == [2, 4, 6]


@pytest.mark.slow
def test_rendered_pytorchjob_commands_train_with_the_operator_env_on_s3(split_dir, s3, tmp_path):
    from fake_k8s import replica_processes
    from msenc_lib.launch.pytorchjob import PyTorchJobConfig, render_pytorchjob

    storage.copy_tree(str(split_dir), s3.uri("split"))
    cfg(eval_every=3, save_every=3).save(s3.uri("configs", "train.yaml"))
    out = s3.uri("models", "job")
    job = render_pytorchjob(PyTorchJobConfig.load(dict(
        image="msenc:test", data_uri=s3.uri("split"), output_uri=out, train_config=s3.uri("configs", "train.yaml"),
        workers=2, preset="tiny", max_steps=6), environ={}))
    secret = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_ENDPOINT_URL": s3.endpoint}
    replicas = replica_processes(job, master_port=free_port(), secrets={"msenc-storage": secret},
                                 python=sys.executable)
    assert [r.rank for r in replicas] == [0, 1] and "LOCAL_RANK" not in replicas[1].env
    base = {k: v for k, v in child_env().items() if not k.startswith("AWS_")}
    outputs = run_to_completion([(r.command, {**base, **r.env}) for r in replicas])
    result = json.loads(outputs[0][0].strip().splitlines()[-1])
    assert result["world_size"] == 2 and result["completed"] and result["steps"] == 6
    keys = s3.keys("models/job/")
    assert {f"models/job/{name}" for name in ("config.json", "model.safetensors", "tokenizer/tokenizer.json",
                                              "metrics.jsonl")} <= set(keys)

    from transformers import AutoModel

    with storage.local_copy(out) as local:
        model = AutoModel.from_pretrained(local)
    assert model.config.seq_lens == [64, 4, 4]


# --------------------------------------------------------------------------------------- warm start
def test_init_model_warm_starts_from_an_export_location(split_dir, tmp_path):
    first = tmp_path / "first"
    run_train(cfg(max_steps=3), str(split_dir), str(first))
    export = tmp_path / "export"
    storage.copy_tree(str(first), str(export / "run-1" / "model"))
    (export / "LATEST").write_text("run-1\n")
    second = run_train(cfg(max_steps=1, learning_rate=1e-12, warmup_ratio=0, init_model=str(export)),
                       str(split_dir), str(tmp_path / "second"))
    assert second.completed
    a, b = load_file(first / "model.safetensors"), load_file(tmp_path / "second" / "model.safetensors")
    # started from the first model's weights (a fresh seed-0 init would differ from them by far more)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


# --------------------------------------------------------------------------------------- bad inputs
def test_missing_split_or_train_sequences_is_a_clear_error(split_dir, tmp_path):
    with pytest.raises(InputDataError, match="split not found"):
        run_train(cfg(max_steps=1), str(tmp_path / "nope"), str(tmp_path / "o1"))
    broken = tmp_path / "broken"
    storage.copy_tree(str(split_dir), str(broken))
    for f in (broken / "train" / "sequences").iterdir():
        f.unlink()
    with pytest.raises(InputDataError, match=r"no training sequences \(expected train/sequences"):
        run_train(cfg(max_steps=1), str(broken), str(tmp_path / "o2"))
    assert not (tmp_path / "o2").exists()
    # through the CLI: exit status 2 and the message, no traceback
    proc = subprocess.run([sys.executable, "-m", "msenc_cli", "train", "--data-dir", str(broken), "--output-dir",
                           str(tmp_path / "o3"), "--preset", "tiny"], env=child_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "no training sequences" in proc.stderr and "Traceback" not in proc.stderr


def test_init_model_with_another_vocabulary_or_architecture_is_refused(split_dir, tmp_path):
    from msenc_lib.model import MultiscaleEncoderConfig, MultiscaleEncoderForMaskedLM

    other_vocab = tmp_path / "other-vocab"
    other = MultiscaleEncoderForMaskedLM(MultiscaleEncoderConfig.from_preset("tiny", vocab_size=40))
    other.save_pretrained(other_vocab)
    with pytest.raises(InputDataError, match="vocab_size 40 does not match the split's tokenizer"):
        run_train(cfg(max_steps=1, init_model=str(other_vocab)), str(split_dir), str(tmp_path / "o1"))
    first = tmp_path / "first"
    run_train(cfg(max_steps=1), str(split_dir), str(first))
    with pytest.raises(ConfigError, match="another architecture than preset 'small'.*seq_lens"):
        run_train(cfg(max_steps=1, preset="small", init_model=str(first)), str(split_dir), str(tmp_path / "o2"))
    with pytest.raises(InputDataError, match="neither a saved model"):
        run_train(cfg(max_steps=1, init_model=str(tmp_path)), str(split_dir), str(tmp_path / "o3"))


def test_presets_and_model_configs_that_do_not_fit(split_dir, tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        run_train(cfg(preset="huge"), str(split_dir), str(tmp_path / "o1"))
    with pytest.raises(ConfigError, match="hidden_sizes: 2 entries for 3 stages"):
        run_train(cfg(model={"hidden_sizes": [64, 32]}), str(split_dir), str(tmp_path / "o2"))
    with pytest.raises(ConfigError, match="context_length 4096 exceeds the model's context 1024"):
        run_train(cfg(context_length=4096), str(split_dir), str(tmp_path / "o3"))
    with pytest.raises(ConfigError, match="field 'batch_size'"):
        cfg(batch_size=0)
    with pytest.raises(ConfigError, match="field 'bogus'"):
        cfg(bogus=1)


def test_resume_without_checkpoint_and_existing_output(split_dir, tmp_path):
    with pytest.raises(ConfigError, match="--resume: no checkpoint in .*checkpoints to continue from"):
        run_train(cfg(max_steps=2, resume=True), str(split_dir), str(tmp_path / "empty"))
    out = tmp_path / "done"
    run_train(cfg(max_steps=2), str(split_dir), str(out))
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(StorageError, match="output already exists.*--resume"):
        run_train(cfg(max_steps=2), str(split_dir), str(out))
    assert (out / "model.safetensors").read_bytes() == before  # nothing lost
    again = run_train(cfg(max_steps=2, seed=9), str(split_dir), str(out), overwrite=True)
    assert again.completed and (out / "model.safetensors").read_bytes() != before


# ---------------------------------------------------------------------------------- early stopping
def test_early_stopping_after_patience_evaluations_keeps_the_best_model(split_dir, tmp_path):
    # a learning rate too small to improve anything: the eval loss stalls, so patience 2 ends the run early
    out = tmp_path / "m"
    result = run_train(cfg(max_steps=60, eval_every=1, early_stopping_patience=2, learning_rate=1e-9,
                           warmup_ratio=0, save_every=5), str(split_dir), str(out))
    evals = [r for r in read_metrics_log(str(out)) if "eval_loss" in r]
    assert result.stopped_early and result.completed and result.steps < 60
    assert [r["step"] for r in evals] == list(range(1, result.steps + 1))
    losses = [r["eval_loss"] for r in evals]
    best = min(range(len(losses)), key=lambda i: (losses[i], i))
    assert result.best_step == evals[best]["step"] and result.best_eval_loss == losses[best]
    assert len(losses) - 1 - best == 2  # stopped at the 2nd evaluation without a better loss
    # the saved model holds the best weights (kept in the final checkpoint too), not the last ones
    from msenc_lib.train.checkpoint import latest_checkpoint, load_checkpoint

    state, best_state = load_checkpoint(latest_checkpoint(str(out)))
    assert state["step"] == result.steps and best_state["step"] == result.best_step
    saved = load_file(out / "model.safetensors")
    assert all(torch.equal(saved[k], best_state["model"][k]) for k in saved)
    assert any(not torch.equal(saved[k], state["model"][k]) for k in saved)


def test_token_ids_outside_the_vocabulary_name_file_row_and_field(split_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "bad"
    storage.copy_tree(str(split_dir), str(bad))
    shard = bad / "train" / "sequences" / "part-00000.parquet"
    table = pq.read_table(shard)
    rows = table.column("input_ids").to_pylist()
    rows[2][10] = 99
    pq.write_table(table.set_column(table.schema.get_field_index("input_ids"), "input_ids",
                                    pa.array(rows, type=pa.list_(pa.int32()))), shard)
    with pytest.raises(InputDataError, match=r"part-00000.parquet row 2 \(cell .*\), field input_ids: token id 99 "
                                             r"outside the tokenizer's vocabulary of 23"):
        run_train(cfg(max_steps=1), str(bad), str(tmp_path / "out"))


@pytest.mark.slow
def test_a_rank_that_fails_to_start_stops_the_other_promptly(split_dir, tmp_path):
    """Rank 1 gets a bad setting (as from a misconfigured pod): both ranks exit with a clear message instead
    of rank 0 waiting in a collective until the timeout."""
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = child_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE="2", RANK=str(rank))
        if rank == 1:
            env["MSENC_TRAIN__PRESET"] = "huge"
        procs.append(subprocess.Popen([sys.executable, "-m", "msenc_cli", "train", "--data-dir", str(split_dir),
                                       "--output-dir", str(tmp_path / "out"), "--progress", "false"], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        errs = [p.communicate(timeout=300)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [2, 2], errs
    assert "training setup failed on another rank" in errs[0]
    assert "unknown preset 'huge'" in errs[1]
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- precision
def test_bf16_autocast_keeps_the_float32_loss_curve_within_seed_noise(split_dir, tmp_path):
    """bf16 autocast (the default where bf16 is native) against float32 from the same seed: the loss curves differ
    by less than two float32 runs of different seeds do, and bf16 learns as much."""
    steps = dict(max_steps=200, log_every=10, learning_rate=3e-3)

    def curve(name: str, **over) -> np.ndarray:
        run_train(cfg(**steps, **over), str(split_dir), str(tmp_path / name))
        return np.array([r["loss"] for r in read_metrics_log(str(tmp_path / name)) if "loss" in r])

    fp32, bf16, other_seed = curve("fp32"), curve("bf16", precision="bf16"), curve("seed1", seed=1)
    assert len(fp32) == len(bf16) == 20
    noise = np.abs(other_seed - fp32).mean()
    assert np.abs(bf16 - fp32).mean() < noise, (np.abs(bf16 - fp32).mean(), noise)
    assert bf16[-5:].mean() < 0.85 * bf16[0] and fp32[-5:].mean() < 0.85 * fp32[0]
    assert abs(bf16[-5:].mean() - fp32[-5:].mean()) < 0.02 * fp32[-5:].mean()


def test_compiled_layers_train_like_eager_ones(split_dir, tmp_path, caplog):
    """--compile on (the default from 16k-token contexts) on the tiny data: the same losses as eager layers."""
    steps = dict(max_steps=3, log_every=1)
    eager = run_train(cfg(**steps, compile="off"), str(split_dir), str(tmp_path / "eager"))
    with caplog.at_level("INFO", logger="msenc_lib"):
        compiled = run_train(cfg(**steps, compile="on"), str(split_dir), str(tmp_path / "compiled"))
    assert any("layers compiled" in r.message for r in caplog.records)
    assert not any("torch.compile failed" in r.message for r in caplog.records)  # it compiled, no eager fallback
    assert compiled.steps == eager.steps == 3
    rows_e, rows_c = read_metrics_log(str(tmp_path / "eager")), read_metrics_log(str(tmp_path / "compiled"))
    assert [r["loss"] for r in rows_c] == pytest.approx([r["loss"] for r in rows_e], rel=1e-4)
