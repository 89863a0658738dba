"""The training stage: masked-LM + number-token pretraining of the multiscale encoder (:mod:`.stage`), and its
pieces: token windows and batches (:mod:`.data`), the distributed setup (:mod:`.distributed`), checkpoints
and metrics (:mod:`.checkpoint`), the optimisation loop (:mod:`.loop`)."""

from msenc_lib.train.stage import TrainConfig, TrainResult, run_train

__all__ = ["TrainConfig", "TrainResult", "run_train"]
