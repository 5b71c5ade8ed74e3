"""``python -m focalsam`` (and ``torchrun -m focalsam train ...``)."""

import sys

from focalsam.cli import main

sys.exit(main())
