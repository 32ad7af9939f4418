"""``python -m mpu``: the ``mpu`` command (the same as ``python -m mpu.cli``)."""

import sys

from mpu.cli import main

sys.exit(main())
