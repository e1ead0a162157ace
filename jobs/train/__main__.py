"""``python -m jobs.train``: the reference trainer (jobs.train.trainer)."""

import logging
import os
import sys

from jobs.train.trainer import main

code = main()
# Leave without the interpreter's teardown: by now every record is written and the reporter is closed. On a loaded
# machine, tearing down torch's and gloo's threads while the other ranks exited has aborted a finished rank
# ("terminate called without an active exception", exit -6) and failed a run whose every rank had succeeded.
logging.shutdown()
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
