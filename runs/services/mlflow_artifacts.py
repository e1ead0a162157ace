"""Files an MLflow client uploads through MLflow's artifact proxy (mlflow-artifacts:/ URIs, the
/api/2.0/mlflow-artifacts/artifacts/... routes), kept in the run's folder under mlflow-artifacts/.

An artifact path is "<run id>/artifacts/...", "<run id>/children/<child id>/artifacts/..." or
"<run id>/models/<model id>/artifacts/..." (the URIs runs.views.mlflow_compat hands out). A path stays inside its
run: absolute paths, "..", "." and empty segments, NUL bytes and any symlink on the way (a job writes in its run
folder and could plant one) are refused with a 400 naming the path, before anything is read or written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from runs.models import Run
from runs.services.rundir import run_dir_path

FOLDER = "mlflow-artifacts"
CHUNK = 1 << 20


class ArtifactRefused(Exception):
    def __init__(self, message: str, *, status: int = 400, code: str = "INVALID_PARAMETER_VALUE"):
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True)
class ArtifactEntry:
    path: str  # relative to the folder listed
    is_dir: bool
    size: int | None


def artifact_root(run: Run) -> Path:
    return run_dir_path(run) / FOLDER


def artifact_uri(run: Run, *parts: str) -> str:
    """The proxy URI the client resolves against its tracking URI (MlflowArtifactsRepository.resolve_uri)."""
    return "mlflow-artifacts:/" + "/".join([str(run.pk), *parts, "artifacts"])


def _parts(run: Run, path: str) -> list[str]:
    """The path's segments below the run's artifact folder, refusing anything that could leave it."""
    if "\x00" in path or "\\" in path:
        raise ArtifactRefused(f"artifact path {path!r} holds a NUL byte or a backslash; use / between folders")
    if path.startswith("/") or PurePosixPath(path).is_absolute():
        raise ArtifactRefused(f"artifact path {path!r} is absolute; give it relative to the run's artifacts")
    parts = path.split("/")
    if parts and parts[-1] == "":
        parts = parts[:-1]  # a trailing slash names the folder
    if any(p in ("", ".", "..") for p in parts):
        raise ArtifactRefused(f"artifact path {path!r} has an empty, '.' or '..' segment; it must stay in its run")
    if not parts or parts[0] != str(run.pk):
        raise ArtifactRefused(
            f"artifact path {path!r} is not under this run's artifacts (they start with '{run.pk}/')",
            status=404,
            code="RESOURCE_DOES_NOT_EXIST",
        )
    return parts[1:]


def _resolve(run: Run, path: str, *, must_exist: bool) -> Path:
    parts = _parts(run, path)
    root = artifact_root(run)
    current = root
    for name in ["", *parts]:
        current = current / name if name else current
        if current.is_symlink():
            raise ArtifactRefused(f"artifact path {path!r} passes through a symbolic link; refused")
        if not current.exists():
            if must_exist:
                raise ArtifactRefused(f"no artifact at {path!r}", status=404, code="RESOURCE_DOES_NOT_EXIST")
            break
    return root.joinpath(*parts)


def artifact_store(*, run: Run, path: str, read: Callable[[int], bytes]) -> int:
    """Write the uploaded bytes (read in chunks) to the artifact at `path`, atomically; returns the size."""
    target = _resolve(run, path, must_exist=False)
    if target == artifact_root(run) or target.is_dir():
        raise ArtifactRefused(f"artifact path {path!r} names a folder; give the file's path")
    target.parent.mkdir(parents=True, exist_ok=True)
    _resolve(run, path, must_exist=False)  # the folders just made: still no link on the way
    size = 0
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := read(CHUNK):
                out.write(chunk)
                size += len(chunk)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return size


def artifact_list(*, run: Run, path: str) -> list[ArtifactEntry]:
    """The entries of the folder at `path` (empty for a file or a folder not made yet), names relative to it."""
    try:
        folder = _resolve(run, path, must_exist=True)
    except ArtifactRefused as exc:
        if exc.status == 404:
            return []
        raise
    if not folder.is_dir():
        return []
    entries = []
    for child in sorted(folder.iterdir()):
        if child.is_symlink() or child.name.startswith(".upload-"):
            continue
        is_dir = child.is_dir()
        entries.append(ArtifactEntry(child.name, is_dir, None if is_dir else child.stat().st_size))
    return entries


def artifact_file(*, run: Run, path: str) -> Path:
    """The file at `path`, for download; 404 for a folder or nothing."""
    target = _resolve(run, path, must_exist=True)
    if not target.is_file():
        raise ArtifactRefused(f"no artifact file at {path!r}", status=404, code="RESOURCE_DOES_NOT_EXIST")
    return target


def artifact_delete(*, run: Run, path: str) -> None:
    target = _resolve(run, path, must_exist=True)
    if target == artifact_root(run):
        raise ArtifactRefused("the run's artifact folder itself is not deleted through the API")
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink()


def artifact_walk(run: Run, *, limit: int = 500) -> list[tuple[str, int]]:
    """Every artifact file of the run (path below "<run id>/", size), for the run page; at most `limit`."""
    root = artifact_root(run)
    if not root.is_dir() or root.is_symlink():
        return []
    found: list[tuple[str, int]] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not Path(folder, d).is_symlink())
        for name in sorted(files):
            full = Path(folder, name)
            if full.is_symlink() or name.startswith(".upload-"):
                continue
            found.append((full.relative_to(root).as_posix(), full.stat().st_size))
            if len(found) >= limit:
                return found
    return found
