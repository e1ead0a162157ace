"""A temporary folder short enough for Unix sockets.

multiprocessing's forkserver and its managers listen on a Unix socket under the temporary folder, and a socket path
is limited to 107 bytes. The job's TMPDIR lies in its run directory, which can already be ~70 bytes deep (a pytest
base folder, a cluster's scratch path), and multiprocessing's own folder and socket names add ~35. Past that, the
pool dies at start with "AF_UNIX path too long". Such a job gets a private folder (0700, made by mkdtemp) under /tmp instead,
removed when it exits.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

SOCKET_PATH_MAX = 107
SOCKET_SUFFIX = len("/pymp-") + 8 + len("/listener-") + 8  # multiprocessing names both with 8 random characters


def ensure_socket_safe_tmpdir() -> str:
    """The temporary folder this process and its children use, moved to a short private one if needed."""
    current = tempfile.gettempdir()
    if len(os.fsencode(current)) + SOCKET_SUFFIX <= SOCKET_PATH_MAX:
        return current
    short = tempfile.mkdtemp(prefix="cp-job-", dir="/tmp")
    os.environ["TMPDIR"] = short
    tempfile.tempdir = short
    atexit.register(shutil.rmtree, short, ignore_errors=True)
    return short
