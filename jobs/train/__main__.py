"""``python -m jobs.train``: the reference trainer (jobs.train.trainer)."""

import sys

from jobs.train.trainer import main

sys.exit(main())
