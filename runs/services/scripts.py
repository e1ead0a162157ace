"""Where an own-script run's script may come from: inside settings.SCRIPT_ROOTS, after symlinks are resolved."""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings


def roots_text() -> str:
    return ", ".join(str(root) for root in settings.SCRIPT_ROOTS)


def script_in_roots(path: str) -> str | None:
    """The script's resolved path when it is a .py file inside a script root, else None."""
    if not path or "\0" in path or not os.path.isabs(path) or len(path) > 4096:
        return None
    real = Path(os.path.realpath(path))
    if real.suffix != ".py" or not real.is_file():
        return None
    for root in settings.SCRIPT_ROOTS:
        root = Path(os.path.realpath(root))
        if root in real.parents:
            return str(real)
    return None
