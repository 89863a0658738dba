"""``python -m msenc_cli``: the ``msenc`` command."""

import sys

from msenc_cli.main import main

sys.exit(main())
