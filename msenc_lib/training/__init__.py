"""Pieces of the training stage (:mod:`msenc_lib.train`): token windows and batches, the distributed
setup, checkpoints and metrics, and the optimisation loop."""
