"""``python -m msenc_lib.train ...``: the PyTorchJob pod command, the same as ``msenc train ...``."""

import sys

from msenc_lib.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
