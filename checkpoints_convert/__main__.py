"""``python -m checkpoints_convert HF_DIR OUT_DIR [--dtype bfloat16] [--quiet]``."""

import sys

from checkpoints_convert.cli import main

sys.exit(main())
