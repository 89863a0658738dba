"""The stage subcommands, declared: each is its config model (the options), its paths and its ``run_<stage>``.

``msenc <stage> --output-dir DIR [...]`` = ``run_<stage>(config, <paths in order>..., overwrite=...)`` with the
config from ``--config FILE`` < ``MSENC_<STAGE>__<FIELD>`` < flags. The original workflow's spellings stay
as aliases (``--input``, ``--output``, ``--ouput-dir``, ``--column-id``, ``--name-id``, ``--aggregation`` ...).
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from msenc_cli.options import add_config_options, config_from_args, parse_bool


@dataclass(frozen=True)
class PathOption:
    """An input or output location: one argument of the stage function."""

    flags: tuple[str, ...]
    dest: str
    help: str
    metavar: str = "DIR"
    required: bool = True
    keyword: str | None = None  # passed by this keyword instead of by position


@dataclass(frozen=True)
class StageCommand:
    name: str
    help: str
    description: str
    config: str  # "module:ConfigClass"
    run: str  # "module:run_function"
    paths: tuple[PathOption, ...]
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    config_flag: str = "--config"


def _load(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def add_stage_command(subparsers, command: StageCommand) -> None:
    p = subparsers.add_parser(command.name, help=command.help, description=command.description,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    for path in command.paths:
        p.add_argument(*path.flags, dest=path.dest, required=path.required, metavar=path.metavar,
                       default=None, help=path.help)
    p.add_argument("--overwrite", nargs="?", const=True, default=False, type=parse_bool, metavar="BOOL",
                   help="replace an existing non-empty output instead of failing")
    add_config_options(p, _load(command.config), aliases=command.aliases, config_flag=command.config_flag)
    p.set_defaults(func=_runner(command))


def _runner(command: StageCommand) -> Callable[[argparse.Namespace], Any]:
    def run(args: argparse.Namespace) -> Any:
        config = config_from_args(_load(command.config), args)
        positional = [getattr(args, p.dest) for p in command.paths if p.keyword is None]
        keywords = {p.keyword: getattr(args, p.dest) for p in command.paths if p.keyword is not None}
        return _load(command.run)(config, *positional, **keywords, overwrite=args.overwrite)
    return run


_OUTPUT = PathOption(("--output-dir",), "output_dir", "output folder (local or s3://)")

GENERATE_DATA = StageCommand(
    name="generate-data",
    help="write the embedded synthetic dataset (unified Parquet)",
    description="""\
Write the embedded synthetic battery dataset (no download needed) in the unified Parquet layout:
<output-dir>/<cell_key>.parquet per cell + _manifest.json, exactly like 'msenc ingest' output.
The cells look like the Severson/BEEP data (multi-step fast-charge policy strings, CC-CV charge to 3.6 V,
4C discharge to 2.0 V, capacity ~1.1 Ah fading with a knee, cycle life 150-2300, temperature rise, the
real files' quirks) and carry the Severson signal (log var dQ_100-10(V) vs log cycle life).
Sizes: tiny (~33k rows, seconds), demo (~250k rows, the README run), bench (~15M rows, benchmarks).
""",
    config="msenc_lib.data.synthetic:GenerateDataConfig",
    run="msenc_lib.data.synthetic:run_generate_data",
    paths=(_OUTPUT,),
)

INGEST = StageCommand(
    name="ingest",
    help="raw data (unified CSV/Parquet, MATR .mat/.pkl, BatteryML/BatteryLife, cycler exports) -> unified Parquet",
    description="""\
Read raw battery data and write the unified table as Parquet: <output-dir>/<cell_key>.parquet per cell
(readable with pandas.read_parquet(<output-dir>)) and <output-dir>/_manifest.json (counts, dtypes,
warnings, repairs, input fingerprints).

Inputs (--input-path: a file, a folder, or a glob; local or s3://). --format auto (default) recognises each
file from its content, and a folder may mix formats:
  csv, parquet     the unified table (e.g. 'msenc generate-data' output, beep-data-utils' unified CSV)
  severson-mat     MATR batch .mat files (MATLAB v7.3) under any name: data.matr.io's
                   2017-05-12_batchdata_...mat or BatteryML's MATR_batch_20170512.mat (release date -> batch)
  severson-pickle  batch pickles of the rdbraatz BuildPkl notebooks (pre-2019-04 ones are refused)
  batteryml        BatteryML / BatteryLife processed cells <cell_id>.pkl (+ BatteryLife '*_labels.json')
  mapped           any CSV/text export, read through a column-mapping YAML (--mapping, or an
                   msenc-mapping.yaml among the inputs)
  arbin, maccor, neware, biologic, novonix, indigo, battery-archive
                   cycler files through TRI's beep parsers (pip install 'msenc[cyclers]')
Pickles are loaded without running code from them. Per-cell metadata (dataset, chemistry, nominal_capacity,
form_factor, ambient_temperature) follows the 16 unified columns.
Real files' glitches are repaired and counted per cell and cycle (time resets re-based, NaN/inf rows dropped,
known-bad MATR cycles excluded, repeated timestamps kept); --strict stops at the first one instead.
Unusable data stops the run with a message naming the file, row, cell and column; nothing is written then.
Formats and flags: msenc_lib/data/README.md.
""",
    config="msenc_lib.ingest:IngestConfig",
    run="msenc_lib.ingest:run_ingest",
    paths=(PathOption(("--input-path",), "input_path", "input file, folder or glob (local or s3://)", "PATH"),
           _OUTPUT),
)

PREPROCESS = StageCommand(
    name="preprocess",
    help="unified table -> token sequences (training or embedding mode)",
    description="""\
Turn the unified table into token sequences in the original workflow's text form (one sequence per cell
in training mode, one per (cell, cycle) in embedding mode), stored as token ids:
  OUT/sequences/part-*.parquet (cell_key, [cycle_number], input_ids list<int32>, n_tokens),
  OUT/tokenizer/ (AutoTokenizer.from_pretrained), OUT/preprocess_config.yaml, OUT/manifest.json,
  OUT/text/<cell>.csv with --text (the original's per-cell CSV: cell_key,[cycle_number,]battery_stream).
tokenizer.decode(input_ids) is exactly the text. The original CLI's options keep their names and defaults,
e.g. (README):
  msenc preprocess --input-path "out/unified/*.csv" --output-dir /datasets/beep \\
      --column-id cell_key --time-sep "<|sep|>" --value-sep "," --column-time cycle_number,time \\
      --smooth-charge-capacity --time-cutoff 1 --is-training-shuffled
Embedding mode: --is-training-shuffled false (or --no-is-training-shuffled); the shards' cycle_number column
holds the value of the first --time-columns (--column-time) column.
Differences from the original: the tokenizer defaults to the built-in numeric one (no hub download); the
permutations come from numpy (same rule, seed 24 by default, but not polars' random order) and the
embedding-mode shuffle is seeded; rows with equal time keep their input order; input may also be Parquet
(e.g. 'msenc ingest' output) and s3://; --workers processes cells in parallel.
""",
    config="msenc_lib.preprocess:PreprocessConfig",
    run="msenc_lib.preprocess:run_preprocess",
    paths=(PathOption(("--input-path", "--input"), "input_path",
                      "unified CSV/Parquet file, folder or glob (local or s3://)", "PATH"),
           PathOption(("--output-dir", "--output"), "output_dir", "output folder (local or s3://)")),
    aliases={"id_column": ("--column-id",), "time_columns": ("--column-time",)},
)

SPLIT = StageCommand(
    name="split",
    help="cell-level train/validation/test split (split_cfg.json)",
    description="""\
Split the cells of a preprocessed dataset (token-weighted), an embeddings folder (row-weighted) or a folder
of per-cell CSV files (byte-weighted, as the original) into train / validation / test, and write
OUT/split_cfg.json in the original's schema ({"train": ["<cell>.csv", ...], "validation": [...],
"test": [...]}) with the subsets beside it. The original's command works as is:
  msenc split --input-dir /datasets/beep --output-dir /dataset/beep-split/ [--ratio-train 0.8 --ratio-validation 0.05]
  msenc split --input-dir embeddings/ --output-dir emb-split/ --config /dataset/beep-split/split_cfg.json
Here --config (= --split-config) names a split_cfg.json to REUSE exactly (the original ignored it); the
document with this command's own options is --stage-config. New splits are seeded (--seed).
--preset severson: Severson et al.'s primary train -> "train", primary test -> "test", secondary test ->
the extra key "secondary_test" (subset folder secondary_test/); "validation" is empty.
""",
    config="msenc_lib.split:SplitConfig",
    run="msenc_lib.split:run_split",
    paths=(PathOption(("--input-dir", "--input"), "input_dir",
                      "preprocessed dataset, embeddings folder or folder of per-cell CSVs (local or s3://)"),
           PathOption(("--output-dir", "--output", "--ouput-dir"), "output_dir",
                      "output folder (local or s3://); --ouput-dir is the original README's spelling"),
           PathOption(("--split-config", "--config"), "split_config", "split_cfg.json to reuse exactly (ours or "
                      "the original's; local or s3://)", "FILE", required=False, keyword="split_config_uri")),
    config_flag="--stage-config",
)

TRAIN = StageCommand(
    name="train",
    help="pretrain the encoder on a split (masked LM + number-token loss)",
    description="""\
Pretrain the multiscale encoder (masked LM, 15% of the tokens; loss 0.7 cross-entropy + 0.3 number-token
loss) on the train subset of a split ('msenc split' output), evaluating on its validation subset.
Token windows of the model's context start at time-step boundaries; AdamW, cosine schedule with warmup,
gradient clipping and accumulation; bf16 autocast on CUDA. Checkpoints go to OUT/checkpoints/ (--resume
continues from the newest), metrics to OUT/metrics.jsonl, the final model (best eval loss) to OUT with its
tokenizer in OUT/tokenizer/.

Distributed: under torchrun, or with the Kubeflow Training Operator's env (MASTER_ADDR, MASTER_PORT,
WORLD_SIZE, RANK), it runs DDP (gloo on CPU, nccl on GPU); only rank 0 writes.
Data and output may be s3:// URIs (endpoint from AWS_ENDPOINT_URL). MLflow logging when mlflow is
installed and MLFLOW_TRACKING_URI is set.

  msenc train --preset tiny --data-dir split/ --output-dir model/ --max-steps 40
""",
    config="msenc_lib.train:TrainConfig",
    run="msenc_lib.train:run_train",
    paths=(PathOption(("--data-dir",), "data_dir", "split folder (local or s3://)", "SPLIT"),
           PathOption(("--output-dir",), "output_dir", "model output folder (local or s3://)", "OUT")),
)

EMBED = StageCommand(
    name="embed",
    help="trained encoder + embedding-mode sequences -> per-cycle embeddings",
    description="""\
Embed an embedding-mode preprocessed dataset (one sequence per cell and cycle) with a trained encoder:
one vector per (cell, cycle) = the pooled last hidden states of the finest stage over the real tokens,
plus the targets (max per cell and cycle of the unified columns). Writes <output-dir>/embeddings.parquet
(cell_key, cycle_number, targets..., val_0..val_{d-1}) and, with --csv, <output-dir>/csv/<cell>.csv in the
original layout (with the trailing 'index' column). Options of the original 'embedd' CLI are accepted
where they make sense (--aggregation, --name-id, --time-id, --model-weight is not needed: the model
folder holds config.json + model.safetensors).""",
    config="msenc_lib.embed:EmbedConfig",
    run="msenc_lib.embed:run_embed",
    paths=(PathOption(("--data-dir",), "data_dir", "embedding-mode preprocessed dataset (local or s3://)"),
           PathOption(("--model-dir",), "model_dir", "trained model folder: save_pretrained output (local or s3://)"),
           PathOption(("--unified-dir",), "unified_dir", "unified data the targets come from (local or s3://)"),
           _OUTPUT),
    aliases={"pooling": ("--aggregation",), "id_column": ("--name-id",), "time_column": ("--time-id",)},
)

EVALUATE = StageCommand(
    name="evaluate",
    help="downstream evaluation: cycle life, early curve, RUL, capacity vs BatteryML's baselines; report.html",
    description="""\
Evaluate embeddings on the downstream tasks beside the field's baselines (design.md §7), on ONE split: a
split config (--split-config) or a standard split (--split-preset: severson, BatteryML's matr1, matr2, clo,
hust, snl, cruh, crush, mix, BatteryLife's batterylife-<dataset>; cells are matched as b1c0 or MATR_b1c0).

  cycle_life   cycle life from the first N cycles (--first-cycles; a preset's own window by default)
  early_curve  the same for N = 10, 20, ... 100 (--early-cycles), each scored
  rul          cycles until capacity < 80 % of nominal (--eol-fraction; the nominal_capacity column, else the
               cell's initial capacity), predicted at cycles 20, 30, ... (--rul-min-cycle/--rul-stride)
  capacity     capacity k cycles ahead (--horizon) against persistence

Rows are <feature set>/<model> (--rows, --curve-rows, --capacity-rows), by default BatteryML's table in its
order (dummy; Severson's variance/discharge/full with linear regression; ridge, PCR, PLSR, GPR, gradient
boosting, random forest, MLP on the dQ(V) curve; CNN and LSTM on the per-cycle curves), then the embedding
heads (elastic net, ridge, PCR, PLSR, random forest, an LSTM head over the per-cycle embeddings) and a random
control. Every figure is the mean ± std over --seeds fitting seeds: RMSE, MAE, MAPE, R² and alpha-accuracy
(--alphas, BatteryLife's). Cells or rows a feature set cannot describe are reported and excluded from all
rows, not fatal. Output (--output-dir, local or s3://): metrics.json, predictions_*, PNG plots, summary.md
and one self-contained report.html.

--finetune adds the row finetuned/lstm to cycle_life: the pretrained encoder (--model-dir, the folder
'msenc train' wrote; only read) and an LSTM head trained end to end on the train cells' token sequences
(--sequences-dir, the embedding-mode dataset 'msenc embed' read), every --finetune-stride-th cycle up to N,
pooled as the embeddings were, early stopping on the validation cells, the encoder at --finetune-lr:
  msenc evaluate --embeddings-dir emb/ --unified-dir unified/ --split-config split/ --output-dir eval/ \\
      --finetune --model-dir model/ --sequences-dir emb_seqs/
A CLI/stage option: the pipeline's evaluate step does not receive the model and the sequences.
""",
    config="msenc_lib.evaluate:EvaluateConfig",
    run="msenc_lib.evaluate:run_evaluate",
    paths=(PathOption(("--embeddings-dir",), "embeddings_dir",
                      "embeddings folder (embeddings.parquet) or Parquet file; local or s3://"),
           PathOption(("--unified-dir",), "unified_dir",
                      "unified data folder (<cell_key>.parquet per cell); local or s3://"),
           PathOption(("--split-config",), "split_config", "split_cfg.json ({'train': ['<cell>.csv', ...], "
                      "'validation': [...], 'test': [...]}) or a split folder holding it; not with --split-preset",
                      "FILE", required=False, keyword="split_config_uri"),
           PathOption(("--output-dir",), "output_dir", "output folder (local or s3://)", keyword="output_uri"),
           PathOption(("--model-dir", "--model"), "model_dir", "--finetune: the pretrained model folder "
                      "(save_pretrained output of 'msenc train'; only read); local or s3://", required=False,
                      keyword="model_uri"),
           PathOption(("--sequences-dir", "--sequences"), "sequences_dir", "--finetune: the embedding-mode "
                      "preprocessed dataset (what 'msenc embed' reads); local or s3://", required=False,
                      keyword="sequences_uri")),
)


STAGE_COMMANDS = (GENERATE_DATA, INGEST, PREPROCESS, SPLIT, TRAIN, EMBED, EVALUATE)
