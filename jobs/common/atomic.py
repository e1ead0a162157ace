"""Write a file so that a reader sees the old content or the new one, never a part, even after a crash; and read
such a JSON file back without trusting that it is there or well formed."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any


def write_atomic(path: str | os.PathLike[str], data: str | bytes, *, mode: int | None = None) -> None:
    """Replace `path` with `data` (str is written as UTF-8).

    The bytes go to a new temporary file in the same directory (a rename is atomic only within one file system),
    are flushed to disk, and the file is renamed over `path`. `mode` (e.g. 0o600 for a secret) is the new file's
    mode from its creation, so the content is never readable more widely; without it the process's umask applies,
    as for any new file.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666 if mode is None else mode)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)  # the umask may have cleared bits the caller asked for
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike[str], data: Any, *, indent: int | None = 1) -> None:
    """`data` as JSON text (UTF-8, a final newline) through write_atomic; the folder is made if it is missing."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, json.dumps(data, ensure_ascii=False, indent=indent) + "\n")


def read_json(path: str | os.PathLike[str]) -> dict | None:
    """The JSON object a file holds, or None when it is missing, unreadable, not JSON or not an object: what a
    watcher reads from a job's folder may not have been written yet, or may come from a job that died early."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
