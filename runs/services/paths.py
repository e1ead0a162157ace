"""Paths a job or a token sends are confined to that run's own directory.

A path is taken relative to the run directory when it is not absolute, refused with '..' among its parts, a NUL or
more than MAX_PATH characters, and resolved (symlinks followed) before the check, so a link inside the run that
points out of it is refused as well. What is stored is the resolved path.
"""

from __future__ import annotations

import os
from pathlib import Path

from runs.models import Run
from runs.services.rundir import run_dir_path

MAX_PATH = 500


class PathRefused(ValueError):
    """A path outside its run; `field` names the input, the message says why and what is allowed."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def path_shape_problem(path: object) -> str | None:
    """What is wrong with a path before any run is known (the ingest body's checks), or None."""
    if not isinstance(path, str):
        return "must be a string"
    if "\0" in path:
        return "contains a NUL character"
    if len(path) > MAX_PATH:
        return f"is {len(path)} characters; at most {MAX_PATH}"
    if ".." in Path(path).parts:
        return "must not contain '..'; give a path inside the run's directory"
    return None


def confine(path: str, *, run_dir: Path, field: str) -> Path:
    """The resolved path, when `path` lies inside `run_dir` (see the module's doc); else PathRefused."""
    problem = path_shape_problem(path)
    if problem is None and not path:
        problem = "is empty"
    if problem is not None:
        raise PathRefused(field, f"{field} {problem}.")
    root = Path(os.path.realpath(run_dir))
    real = Path(os.path.realpath(run_dir / path))  # an absolute `path` replaces run_dir
    if real != root and root not in real.parents:
        raise PathRefused(
            field, f"{field} {path!r} resolves to {real}, outside the run's directory {root}; send a path inside it."
        )
    return real


def confine_to_run(path: str, *, run: Run, field: str) -> Path:
    return confine(path, run_dir=run_dir_path(run), field=field)


def inside_run(path: str, *, run: Run) -> bool:
    """Whether a stored path (a checkpoint's, from before paths were checked) still lies inside its run."""
    try:
        confine_to_run(path, run=run, field="path")
    except PathRefused:
        return False
    return True
