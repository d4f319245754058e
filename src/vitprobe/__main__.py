"""``python -m vitprobe`` (and ``torchrun -m vitprobe run ...``)."""

import sys

from vitprobe.cli import main

sys.exit(main())
