"""``python -m jobs.serve``: the inference server (jobs.serve.server)."""

import sys

from jobs.serve.server import main

sys.exit(main())
