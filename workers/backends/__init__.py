"""Launcher backends: how a prepared run directory becomes a job on a cluster, and how we watch and stop it."""

from workers.backends.base import Backend, JobHandle, JobState, JobStatus, LaunchSpec


def get_backend(kind: str) -> Backend:
    if kind == "local":
        from workers.backends.local import LocalBackend

        return LocalBackend()
    if kind == "slurm":
        from workers.backends.slurm import SlurmBackend

        return SlurmBackend()
    if kind == "hostfile":
        from workers.backends.hostfile import HostfileBackend

        return HostfileBackend()
    raise ValueError(f"unknown backend {kind!r}; use local, slurm or hostfile")


__all__ = ["Backend", "JobHandle", "JobState", "JobStatus", "LaunchSpec", "get_backend"]
