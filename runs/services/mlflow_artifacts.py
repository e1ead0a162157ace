"""Files an MLflow client uploads through MLflow's artifact proxy (mlflow-artifacts:/ URIs, the
/api/2.0/mlflow-artifacts/artifacts/... routes), kept in the run's folder under mlflow-artifacts/.

An artifact path is "<run id>/artifacts/...", "<run id>/children/<child id>/artifacts/..." or
"<run id>/models/<model id>/artifacts/..." (the URIs runs.views.mlflow_compat hands out). A path stays inside its
run: absolute paths, "..", "." and empty segments, NUL bytes and any symlink on the way (a job writes in its run
folder and could plant one) are refused with a 400 naming the path, before anything is read or written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

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


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _link_refused(path: str) -> ArtifactRefused:
    return ArtifactRefused(f"artifact path {path!r} passes through a symbolic link; refused")


def _missing(path: str) -> ArtifactRefused:
    return ArtifactRefused(f"no artifact at {path!r}", status=404, code="RESOURCE_DOES_NOT_EXIST")


def _open_dir(name: str, parent: int | None, path: str, *, create: bool) -> int:
    """Open one folder below `parent` without following a link (the run's job owns its run folder and could swap
    a folder for a link at any moment: every step is opened relative to the one before, never by path)."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        if not create:
            raise _missing(path) from None
        try:
            os.mkdir(name, 0o750, dir_fd=parent)
        except FileExistsError:
            pass
        return _open_dir(name, parent, path, create=False)
    except (NotADirectoryError, OSError) as exc:
        if os.path.islink(name) if parent is None else _is_link(name, parent):
            raise _link_refused(path) from None
        if isinstance(exc, NotADirectoryError):
            raise _missing(path) from None
        raise


def _is_link(name: str, parent: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def _folder_fd(run: Run, parts: list[str], path: str, *, create: bool) -> int:
    """A descriptor of the folder `parts` below the run's artifact folder."""
    run_dir = run_dir_path(run)
    if create:
        run_dir.mkdir(parents=True, exist_ok=True)
    fd = _open_dir(str(run_dir), None, path, create=False)
    try:
        for name in [FOLDER, *parts]:
            child = _open_dir(name, fd, path, create=create)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def artifact_store(*, run: Run, path: str, read: Callable[[int], bytes]) -> int:
    """Write the uploaded bytes (read in chunks) to the artifact at `path`, atomically; returns the size."""
    parts = _parts(run, path)
    if not parts:
        raise ArtifactRefused(f"artifact path {path!r} names a folder; give the file's path")
    folder = _folder_fd(run, parts[:-1], path, create=True)
    name, tmp = parts[-1], f".upload-{uuid.uuid4().hex}"
    try:
        if _is_link(name, folder):
            raise _link_refused(path)
        out_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640, dir_fd=folder)
        size = 0
        try:
            with os.fdopen(out_fd, "wb") as out:
                while chunk := read(CHUNK):
                    out.write(chunk)
                    size += len(chunk)
            try:
                os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)  # a link in its place is replaced
            except IsADirectoryError:
                raise ArtifactRefused(f"artifact path {path!r} names a folder; give the file's path") from None
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=folder)
            raise
    finally:
        os.close(folder)
    return size


def artifact_list(*, run: Run, path: str) -> list[ArtifactEntry]:
    """The entries of the folder at `path` (empty for a file or a folder not made yet), names relative to it."""
    parts = _parts(run, path)
    try:
        folder = _folder_fd(run, parts, path, create=False)
    except ArtifactRefused as exc:
        if exc.status == 404:
            return []
        raise
    entries = []
    try:
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.is_symlink() or entry.name.startswith(".upload-"):
                continue
            is_dir = entry.is_dir(follow_symlinks=False)
            size = None if is_dir else entry.stat(follow_symlinks=False).st_size
            entries.append(ArtifactEntry(entry.name, is_dir, size))
    finally:
        os.close(folder)
    return entries


def artifact_open(*, run: Run, path: str) -> BinaryIO:
    """The file at `path`, opened for download without following a link; 404 for a folder or nothing."""
    parts = _parts(run, path)
    if not parts:
        raise _missing(path)
    folder = _folder_fd(run, parts[:-1], path, create=False)
    try:
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
        except FileNotFoundError:
            raise _missing(path) from None
        except OSError:
            if _is_link(parts[-1], folder):
                raise _link_refused(path) from None
            raise
    finally:
        os.close(folder)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _missing(path)
    return os.fdopen(fd, "rb")


def artifact_delete(*, run: Run, path: str) -> None:
    parts = _parts(run, path)
    if not parts:
        raise ArtifactRefused("the run's artifact folder itself is not deleted through the API")
    folder = _folder_fd(run, parts[:-1], path, create=False)
    try:
        mode = os.stat(parts[-1], dir_fd=folder, follow_symlinks=False).st_mode
        if stat.S_ISDIR(mode):
            shutil.rmtree(parts[-1], dir_fd=folder)  # rmtree with dir_fd never follows links
        else:
            os.unlink(parts[-1], dir_fd=folder)
    except FileNotFoundError:
        raise _missing(path) from None
    finally:
        os.close(folder)


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
