import sys

from msenc_lib.cli import main

sys.exit(main())
