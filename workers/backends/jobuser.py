"""The unprivileged user a local job runs as, and the files it may reach.

Run N runs as uid START+N of settings.JOB_UIDS, in group START, shared by every job and by nothing else. The group
may only pass through the control plane's folders (var/ and the runs folder: mode 0710), never list or read them;
each run directory is its run's user's own (0700), so a job reaches its own directory and nothing of the control
plane's: not var/secret_key, not the SQLite database or the Redis socket (0600, the control plane's), not another
run's directory. A job of another run (a resume from another run's checkpoint) gets a copy of what it needs.

A job must also be able to start its interpreter and read its script: both are checked before launch, with a
message naming what the job user cannot reach (an interpreter under /root, for one: set CP_JOB_PYTHON).
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from workers.backends.base import LaunchError


@dataclass(frozen=True)
class JobUser:
    uid: int
    gid: int
    umask: int = 0o077  # a run's files are its own; a data job's are readable by the jobs' group (data_user)


def job_user(run_id: int) -> JobUser | None:
    """The user run `run_id` runs as, or None when jobs run as the control plane's account (JOB_UIDS off)."""
    if settings.JOB_UIDS is None:
        return None
    start, end = settings.JOB_UIDS
    uid = start + run_id
    if run_id < 1 or uid >= end:
        raise LaunchError(
            f"run {run_id} has no user in CP_JOB_UIDS={start}-{end}: widen the range so that START+{run_id} fits "
            "below END (END itself runs the data jobs)."
        )
    return JobUser(uid=uid, gid=start)


def data_user() -> JobUser | None:
    """The user count and prep jobs run as: END of CP_JOB_UIDS, which no run gets; None when JOB_UIDS is off.

    One fixed user, not one per prep: what a prep writes (shards, tokenizer) is read by every run that trains on the
    recipe, as the jobs' group, so its files are group-readable (umask 027) and its folders 0750; a per-prep user
    would isolate preps from each other, which read and write nothing of each other's. What matters is that these
    jobs, which parse files an operator registered with third-party readers, never run as the control plane and
    reach nothing of var/ or of the runs (0700, their own users')."""
    if settings.JOB_UIDS is None:
        return None
    start, end = settings.JOB_UIDS
    return JobUser(uid=end, gid=start, umask=0o027)


def _open_parents(folder: Path, user: JobUser) -> None:
    """The control plane's folders above `folder`, inside var/ or the prep folder: pass-through for the jobs' group."""
    tops = {Path(settings.VAR_DIR).resolve(), Path(settings.PREP_DIR).resolve()}
    for parent in folder.resolve().parents:
        inside = any(parent == top or top in parent.parents for top in tops)
        if inside and parent.stat().st_uid == os.geteuid():
            open_to_jobs(parent, user)


def give_data_dir(folder: Path, user: JobUser) -> None:
    """A count or prep folder (and what the control plane wrote in it) to the data user, readable by the jobs'
    group (runs read a prep's shards); the folders above it opened for passing through."""
    folder.mkdir(parents=True, exist_ok=True)
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in (*dirnames, *filenames):
            os.chown(os.path.join(dirpath, name), user.uid, user.gid, follow_symlinks=False)
    os.chown(folder, user.uid, user.gid)
    folder.chmod(0o750)
    _open_parents(folder, user)
    for root in settings.DATA_ROOTS:
        # The operator's data folders inside var/ (var/data by default): the jobs' group may read them.
        root = Path(root).resolve()
        if root.is_dir() and Path(settings.VAR_DIR).resolve() in root.parents and root.stat().st_uid == os.geteuid():
            os.chown(root, -1, user.gid)
            root.chmod(0o750)
            _open_parents(root, user)
    check_reachable(folder, user, bits=7, what="its data folder")


def _may(st: os.stat_result, user: JobUser, bits: int) -> bool:
    """Whether `user` has `bits` (a mask of 4 read, 2 write, 1 execute) on a file with this stat."""
    if st.st_uid == user.uid:
        return st.st_mode >> 6 & bits == bits
    if st.st_gid == user.gid:
        return st.st_mode >> 3 & bits == bits
    return st.st_mode & bits == bits


def check_reachable(path: Path, user: JobUser, *, bits: int, what: str) -> None:
    """Raise LaunchError unless `user` passes through every folder above `path` and has `bits` on it."""
    real = Path(os.path.realpath(path))
    for folder in reversed(real.parents):
        if not _may(folder.stat(), user, 1):
            raise LaunchError(
                f"the job user (uid {user.uid}) cannot reach {what} {real}: {folder} is closed to it "
                f"(mode {stat.filemode(folder.stat().st_mode)})"
                + ("; set CP_JOB_PYTHON to an interpreter outside it" if what == "the interpreter" else "")
            )
    if not real.exists() or not _may(real.stat(), user, bits):
        raise LaunchError(f"the job user (uid {user.uid}) may not {'run' if bits & 1 else 'read'} {what} {real}")


def open_to_jobs(folder: Path, user: JobUser) -> None:
    """A control-plane folder jobs must pass through: group JobUser.gid may traverse it, nobody else anything."""
    os.chown(folder, -1, user.gid)
    folder.chmod(0o710)


def give_run_dir(run_dir: Path, user: JobUser) -> None:
    """Make the run directory (and all the control plane wrote in it) the job user's alone; open the folders above
    it that belong to the control plane to the jobs' group (pass-through only)."""
    for dirpath, dirnames, filenames in os.walk(run_dir):
        for name in (*dirnames, *filenames):
            os.chown(os.path.join(dirpath, name), user.uid, user.gid, follow_symlinks=False)
    os.chown(run_dir, user.uid, user.gid)
    run_dir.chmod(0o700)
    runs_dir = Path(settings.RUNS_DIR).resolve()
    var_dir = Path(settings.VAR_DIR).resolve()
    for folder in run_dir.resolve().parents:
        if folder in (runs_dir, var_dir) and folder.stat().st_uid == os.geteuid():
            open_to_jobs(folder, user)
    check_reachable(run_dir, user, bits=7, what="its run directory")


def stage_checkpoint(source: str, run_dir: Path, user: JobUser) -> str:
    """A checkpoint of another run, copied into this run's directory (the job cannot read the other run's)."""
    src = Path(source).resolve()
    if run_dir.resolve() in src.parents:
        return str(src)
    dest = run_dir / "resume" / src.name
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, symlinks=False)
    return str(dest)
