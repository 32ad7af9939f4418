"""``python -m mpu.cli`` (what torchrun and accelerate launch)."""

import sys

from mpu.cli import main

sys.exit(main())
