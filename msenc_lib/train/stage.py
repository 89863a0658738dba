"""Training stage: masked-LM + number-token pretraining of the multiscale encoder on a split's train subset.

``run_train(config, data_uri, output_uri) -> TrainResult``; ``msenc train`` and ``python -m msenc_cli train``
(the PyTorchJob pod command) call it. Runs on one CPU/GPU, under torchrun, or with the Kubeflow Training
Operator's env (``MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK``): DDP when ``WORLD_SIZE > 1``.

Output (``output_uri``, local or s3://): ``config.json`` + ``model.safetensors`` (``save_pretrained``; the
best-by-eval-loss weights when evaluation ran, else the last), ``tokenizer/``, ``train_config.yaml``,
``metrics.jsonl``, ``checkpoints/`` (resume state). ``config.json`` is written last: a run that stopped
early leaves checkpoints and metrics, never a half-written model.

CPU allocator: msenc allocates little per step (no full attention matrices, no full-vocabulary logits), so
``THP_MEM_ALLOC_ENABLE=1``, which halves mblm's page faults, is left to the user: it measured between 17 %
faster (tiny preset) and 45 % slower (seed preset) here (benchmarks/README.md).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from msenc_lib import layout, storage
from msenc_lib.config import StageConfig
from msenc_lib.errors import ConfigError, InputDataError, MsencError, StorageError

log = logging.getLogger(__name__)

ARCHITECTURE_FIELDS = ("seq_lens", "hidden_sizes", "num_layers", "num_attention_heads", "head_dim", "ff_multiplier",
                       "use_absolute_positions", "use_rotary")


class TrainConfig(StageConfig):
    stage = "train"
    retired = frozenset({"overwrite"})  # now run_train's argument (--overwrite), like every stage's

    preset: str = Field("seed", description="model size: tiny (seconds on CPU), small (the demo), seed (the "
                        "original's 2048x8x4 = 65,536-token model), seed_wide (seed with 8 global heads of dim 32)")
    model: dict[str, Any] = Field(default_factory=dict, description="overrides of the preset's model config "
                                  "fields (e.g. {seq_lens: [64, 4, 4], attention_dropout: 0.1})")
    context_length: int | None = Field(None, ge=1, description="tokens per training window; default = the "
                                       "model's context prod(seq_lens)")
    init_model: str | None = Field(None, description="warm start: weights of a saved model folder or of the "
                                   "newest model of an export location (LATEST); same architecture and vocabulary")
    seed: int = Field(0, description="seed of the model init, the window order and the masking")
    max_steps: int = Field(1000, ge=1, description="optimizer steps (the cosine schedule spans them)")
    stop_after: int | None = Field(None, ge=1, description="stop after this step with a checkpoint but no final "
                                   "model, as if interrupted (continue with --resume)")
    batch_size: int = Field(1, ge=1, description="windows per process per micro-batch")
    grad_accum_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    learning_rate: float = Field(1e-3, gt=0, description="AdamW peak learning rate")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not on biases and norms)")
    adam_beta1: float = Field(0.9, gt=0, lt=1, description="AdamW beta1")
    adam_beta2: float = Field(0.999, gt=0, lt=1, description="AdamW beta2")
    adam_epsilon: float = Field(1e-8, gt=0, description="AdamW epsilon")
    warmup_ratio: float = Field(0.05, ge=0, le=1, description="linear warmup share of max_steps, then cosine decay")
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping norm (0: off)")
    mask_probability: float = Field(0.15, gt=0, lt=1, description="share of real non-special tokens masked")
    ce_weight: float = Field(0.7, ge=0, description="cross-entropy weight of the loss")
    ntl_weight: float = Field(0.3, ge=0, description="number-token loss weight of the loss")
    ntl_type: Literal["mse", "was"] = Field("mse", description="number-token loss: mse (the original) or was")
    eval_every: int = Field(200, ge=0, description="evaluate on the validation split every N steps (0: never)")
    eval_batch_size: int = Field(4, ge=1, description="windows per process per evaluation batch")
    eval_max_windows: int | None = Field(None, ge=1, description="cap on validation windows per evaluation")
    early_stopping_patience: int = Field(3, ge=0, description="stop after N evaluations without a better eval "
                                         "loss (0: never)")
    save_every: int = Field(200, ge=0, description="checkpoint every N steps (0: only at the end)")
    save_total_limit: int = Field(2, ge=1, description="checkpoints kept")
    log_every: int = Field(10, ge=1, description="a metrics row every N steps")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast where bf16 matmuls "
                                                       "are native (CUDA; CPUs with AMX or AVX512-BF16), else fp32")
    compile: Literal["auto", "on", "off"] = Field("auto", description="torch.compile the transformer layers (eager "
                                                  "if compiling fails); auto: on for contexts of 16,384+ tokens")
    activation_memory_budget: float | None = Field(None, gt=0, le=1, description="compiled layers only: below 1, "
                                                   "the backward pass recomputes cheap activations instead of keeping "
                                                   "them (0.8 at the seed config: a sixth less peak memory, 7 "
                                                   "percent longer steps)")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass")
    resume: bool = Field(False, description="continue from the latest checkpoint in the output folder")
    progress: bool = Field(True, description="progress bar on stderr (rank 0)")
    dist_timeout_s: float = Field(1800.0, gt=0, description="timeout of collective operations (seconds)")


class TrainResult(BaseModel):
    output_uri: str
    completed: bool  # False: stopped by stop_after (resume to finish)
    steps: int
    max_steps: int
    final_loss: float
    best_eval_loss: float | None
    best_step: int | None
    stopped_early: bool
    resumed_from_step: int | None
    n_parameters: int
    n_train_windows: int  # windows per epoch
    world_size: int
    global_batch_windows: int
    tokens_per_s: float
    seconds: float


# ------------------------------------------------------------------------------------------ inputs
def _load_split(data_dir: Path) -> tuple[Any, Path, Path | None]:
    from transformers import AutoTokenizer

    train, validation = (data_dir / subset for subset in layout.SUBSETS[:2])
    if not layout.sequence_files(str(train)):
        raise InputDataError(f"{data_dir}: no training sequences (expected train/sequences/part-*.parquet, the "
                             "layout 'msenc split' writes)")
    tok_dir = data_dir / layout.TOKENIZER_DIR
    if not layout.has_tokenizer(tok_dir):
        raise InputDataError(f"{data_dir}: no tokenizer/ folder (the layout 'msenc split' writes)")
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    has_val = bool(layout.sequence_files(str(validation)))
    return tokenizer, train / layout.SEQUENCES_DIR, validation / layout.SEQUENCES_DIR if has_val else None


def _model_config(config: TrainConfig, tokenizer):
    from msenc_lib.model import MultiscaleEncoderConfig
    from msenc_lib.tokenizer import digit_token_ids, special_token_ids

    ids = special_token_ids(tokenizer)
    try:
        return MultiscaleEncoderConfig.from_preset(
            config.preset, **{**dict(vocab_size=len(tokenizer), pad_token_id=ids["pad"], mask_token_id=ids["mask"],
                                     digit_token_ids=digit_token_ids(tokenizer), ce_weight=config.ce_weight,
                                     ntl_weight=config.ntl_weight, ntl_type=config.ntl_type), **config.model})
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model config (preset {config.preset!r}, overrides {config.model}): {e}") from None


def _build_model(config: TrainConfig, tokenizer):
    import torch

    from msenc_lib.model import MultiscaleEncoderForMaskedLM

    wanted = _model_config(config, tokenizer)
    if not config.init_model:
        torch.manual_seed(config.seed)
        return MultiscaleEncoderForMaskedLM(wanted)
    from msenc_lib.export import resolve_model_uri

    uri = resolve_model_uri(config.init_model)
    with storage.local_copy(uri) as local:
        try:
            model = MultiscaleEncoderForMaskedLM.from_pretrained(str(local))
        except (OSError, ValueError) as e:
            raise InputDataError(f"init_model {uri}: cannot load it as an msenc model: {e}") from None
    got = model.config
    for name in ("vocab_size", "pad_token_id", "mask_token_id", "digit_token_ids"):
        if getattr(got, name) != getattr(wanted, name):
            raise InputDataError(
                f"init_model {uri}: {name} {getattr(got, name)} does not match the split's tokenizer "
                f"({getattr(wanted, name)}); warm-start only from a model trained with this tokenizer")
    diff = [f"{n} {getattr(got, n)} != {getattr(wanted, n)}" for n in ARCHITECTURE_FIELDS
            if getattr(got, n) != getattr(wanted, n)]
    if diff:
        raise ConfigError(f"init_model {uri} has another architecture than preset {config.preset!r} "
                          f"(+ model overrides): {'; '.join(diff)}; set the preset the model was trained with")
    for name in ("ce_weight", "ntl_weight", "ntl_type", "attention_dropout", "hidden_dropout"):
        setattr(got, name, getattr(wanted, name))
    log.info("warm start from %s", uri)
    return model


def _prepare(config: TrainConfig, data_uri: str, output_uri: str, overwrite: bool):
    """Tokenizer, model, train/validation windows, the checkpoint to resume from, a local tokenizer copy."""
    from msenc_lib.model.masking import MaskingSpec
    from msenc_lib.tokenizer import special_token_ids
    from msenc_lib.train.checkpoint import latest_checkpoint
    from msenc_lib.train.data import EVAL_MASK_SEED, WindowDataset, read_sequences

    # every rank reads the split once (s3: one download per process)
    with storage.local_copy(data_uri) as data_dir:
        tokenizer, train_seq, val_seq = _load_split(Path(data_dir))
        ids = special_token_ids(tokenizer)
        train_cells = read_sequences(train_seq, ids["sep"], len(tokenizer))
        val_cells = read_sequences(val_seq, ids["sep"], len(tokenizer)) if val_seq is not None else []
        tok_tmp = tempfile.TemporaryDirectory(prefix="msenc-tok-")
        tokenizer.save_pretrained(tok_tmp.name)
    model = _build_model(config, tokenizer)
    context = config.context_length or model.config.max_context
    if context > model.config.max_context:
        raise ConfigError(f"context_length {context} exceeds the model's context {model.config.max_context} "
                          f"(seq_lens {model.config.seq_lens})")
    spec = MaskingSpec.create(ids["mask"], tokenizer.all_special_ids + list(ids.values()), len(tokenizer),
                              probability=config.mask_probability)
    train_data = WindowDataset(train_cells, context, spec, config.seed, ids["pad"])
    val_data = (WindowDataset(val_cells, context, spec, 0, ids["pad"], shuffle=False, mask_seed=EVAL_MASK_SEED)
                if val_cells and config.eval_every else None)
    if config.eval_every and val_data is None:
        log.warning("no validation sequences in %s: no evaluation, no early stopping; the last model is kept",
                    data_uri)

    # output: fresh, resumed or overwritten
    resume_from = None
    if config.resume:
        resume_from = latest_checkpoint(output_uri)
        if resume_from is None:
            raise ConfigError(f"--resume: no checkpoint in {storage.join(output_uri, layout.CHECKPOINTS_DIR)} to "
                              "continue from; run without --resume to start training")
    elif storage.exists(output_uri) and storage.list_files(output_uri) and not overwrite:
        raise StorageError(f"output already exists and is not empty: {output_uri} (use --resume to "
                           "continue its training, --overwrite to replace it, or another output)")
    return tokenizer, model, train_data, val_data, resume_from, tok_tmp


# ---------------------------------------------------------------------------------------- the stage
def run_train(config: TrainConfig, data_uri: str, output_uri: str, overwrite: bool = False) -> TrainResult:
    """Pretrain on ``data_uri`` (a split folder/prefix) into ``output_uri``; distributed from the env.

    An existing non-empty output is an error unless ``config.resume`` (continue it) or ``overwrite`` (replace it).
    """
    from msenc_lib.tokenizer import digit_token_ids
    from msenc_lib.train import distributed
    from msenc_lib.train.loop import Trainer

    start = time.perf_counter()
    data_uri, output_uri = str(data_uri), str(output_uri).rstrip("/")
    if not storage.exists(data_uri):
        raise InputDataError(f"split not found: {data_uri}")
    ctx = distributed.setup(config.device, config.dist_timeout_s)
    try:
        # every rank prepares (reads the split, builds the model, checks the output); if one fails, all stop
        # at once instead of the others waiting for it in a collective until the timeout
        try:
            prep, failure = _prepare(config, data_uri, output_uri, overwrite), None
        except Exception as e:  # re-raised below, on this rank as it is
            prep, failure = None, e
        if ctx.any_true(failure is not None):
            if failure is not None:
                raise failure
            raise MsencError("training setup failed on another rank; see that rank's log")
        tokenizer, model, train_data, val_data, resume_from, tok_tmp = prep
        if overwrite and not config.resume and ctx.is_main:
            storage.remove(output_uri)
        ctx.barrier()

        trainer = Trainer(config, model, train_data, val_data, ctx, output_uri,
                          digit_ids=digit_token_ids(tokenizer))
        if resume_from is not None:
            trainer.restore(resume_from)
        elif ctx.is_main:
            config.save(storage.join(output_uri, layout.TRAIN_CONFIG))
        outcome = trainer.train()
        if outcome.completed and ctx.is_main:
            _save_final(trainer, config, Path(tok_tmp.name), output_uri)
        ctx.barrier()
        tok_tmp.cleanup()
        return TrainResult(
            output_uri=output_uri, completed=outcome.completed, steps=outcome.step, max_steps=config.max_steps,
            final_loss=outcome.final_loss, best_eval_loss=outcome.best_eval_loss, best_step=outcome.best_step,
            stopped_early=outcome.stopped_early,
            resumed_from_step=trainer.resumed_step, n_parameters=trainer.n_parameters,
            n_train_windows=train_data.windows_per_epoch, world_size=ctx.world_size,
            global_batch_windows=config.batch_size * config.grad_accum_steps * ctx.world_size,
            tokens_per_s=outcome.tokens_per_s, seconds=round(time.perf_counter() - start, 3))
    finally:
        ctx.close()


def _save_final(trainer, config: TrainConfig, tokenizer_dir: Path, output_uri: str) -> None:
    """Model (best or last weights), tokenizer, config and metrics into the output; config.json last."""
    import shutil

    model = trainer.final_model()
    with tempfile.TemporaryDirectory(prefix="msenc-model-") as tmp:
        tmp_path = Path(tmp)
        model.save_pretrained(str(tmp_path), safe_serialization=True)
        shutil.copytree(tokenizer_dir, tmp_path / layout.TOKENIZER_DIR)
        files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.name == layout.MODEL_CONFIG)  # the "model is complete" marker goes last
        for path in files:
            storage.write_bytes(storage.join(output_uri, path.relative_to(tmp_path).as_posix()), path.read_bytes())
    config.save(storage.join(output_uri, layout.TRAIN_CONFIG))
    trainer.metrics.flush()
