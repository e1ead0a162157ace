"""A job whose TMPDIR lies deep in its run directory can still start a multiprocessing pool."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROGRAM = """
import multiprocessing, os, tempfile
from jobs.common.tmpdir import ensure_socket_safe_tmpdir
short = ensure_socket_safe_tmpdir()
print(short)
assert os.stat(short).st_mode & 0o777 == 0o700 or short == os.environ.get("EXPECTED_TMP")
ctx = multiprocessing.get_context("forkserver")
with ctx.Manager() as manager:
    print(manager.list([1, 2])[1])
"""


def _run(tmp: Path) -> subprocess.CompletedProcess[str]:
    tmp.mkdir(parents=True)
    env = {**os.environ, "TMPDIR": str(tmp), "EXPECTED_TMP": str(tmp)}
    return subprocess.run(
        [sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=120, cwd=Path.cwd()
    )


def test_a_deep_tmpdir_is_replaced_by_a_short_private_one_that_is_removed_at_exit(tmp_path):
    deep = tmp_path / ("d" * 60) / "attempt-1" / "tmp"
    result = _run(deep)
    assert result.returncode == 0, result.stderr
    short, value = result.stdout.split()
    assert value == "2"
    assert short.startswith("/tmp/cp-job-") and len(short) < 40
    assert not Path(short).exists()


def test_a_short_tmpdir_is_kept(tmp_path):
    result = _run(Path("/tmp") / f"s{os.getpid()}")
    try:
        assert result.returncode == 0, result.stderr
        assert result.stdout.split()[0] == f"/tmp/s{os.getpid()}"
    finally:
        Path(f"/tmp/s{os.getpid()}").rmdir()
