"""``python -m msenc_lib.train ...``: the PyTorchJob pod command, the same as ``msenc train ...``.

An entry point of the CLI layer that lives here for that command's name; nothing imports it.
"""

import sys

from msenc_cli.main import main

sys.exit(main(["train", *sys.argv[1:]]))
