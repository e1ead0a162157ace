"""The job's input, `JOB_DIR/prep.json` or `JOB_DIR/count.json` (docs/run-config.md, "Data preparation")."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.data.prep import settings as prep_settings

FORMATS = ("jsonl", "text", "parquet")
EXECUTORS = ("local", "slurm")
_GLOB_CHARS = "*?["


class SpecError(ValueError):
    """prep.json or count.json that the job cannot run; the message names the field."""


@dataclass(frozen=True)
class SourceSpec:
    name: str
    language: str
    format: str
    path: str  # a file, a folder or a glob; local, or a URL fsspec knows (s3://...) where configured
    text_field: str = "text"
    weight: float = 0.0
    documents: int | None = None  # from the source's count, for progress

    def folder_and_glob(self) -> tuple[str, str | None]:
        """(folder, glob relative to it) as datatrove's readers take them."""
        path = self.path
        parts = path.split("/")
        for i, part in enumerate(parts):
            if any(c in part for c in _GLOB_CHARS):
                folder = "/".join(parts[:i]) or "/"
                return folder, "/".join(parts[i:])
        if "://" not in path and os.path.isfile(path):
            return os.path.dirname(path) or ".", os.path.basename(path)
        return path, None


@dataclass(frozen=True)
class ExecutorSpec:
    kind: str = "local"
    tasks: int = 2
    workers: int = 2
    partition: str = ""
    cpus_per_task: int = 1
    mem_per_cpu_gb: int = 1
    time_limit_min: int = 240


@dataclass(frozen=True)
class PrepSpec:
    job_dir: Path
    job_id: int
    recipe: dict  # {"name", "version"}
    sources: list[SourceSpec]
    settings: dict
    executor: ExecutorSpec = field(default_factory=ExecutorSpec)
    shard_tokens: int = 1 << 24

    @property
    def work(self) -> Path:
        return self.job_dir / "work"

    def weights(self) -> dict[str, float]:
        return {s.name: s.weight for s in self.sources}


def _source(raw: Any, i: int, *, weighted: bool) -> SourceSpec:
    where = f"sources.{i}"
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: must be an object with name, language, format and path")
    for key in ("name", "format", "path"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise SpecError(f"{where}.{key}: missing or not a string")
    if raw["format"] not in FORMATS:
        raise SpecError(f"{where}.format: {raw['format']!r} is not one of {', '.join(FORMATS)}")
    weight = raw.get("weight", 0.0)
    if weighted and (not isinstance(weight, int | float) or weight <= 0):
        raise SpecError(f"{where}.weight: must be a positive number, not {weight!r}")
    documents = raw.get("documents")
    return SourceSpec(
        name=raw["name"],
        language=str(raw.get("language") or ""),
        format=raw["format"],
        path=raw["path"],
        text_field=str(raw.get("text_field") or "text"),
        weight=float(weight or 0.0),
        documents=int(documents) if isinstance(documents, int) else None,
    )


def _executor(raw: Any) -> ExecutorSpec:
    raw = raw or {}
    kind = raw.get("kind", "local")
    if kind not in EXECUTORS:
        raise SpecError(f"executor.kind: {kind!r} is not one of {', '.join(EXECUTORS)}")
    values = {}
    for key in ("tasks", "workers", "cpus_per_task", "mem_per_cpu_gb", "time_limit_min"):
        if key in raw:
            if not isinstance(raw[key], int) or raw[key] < 1:
                raise SpecError(f"executor.{key}: must be a whole number of at least 1, not {raw[key]!r}")
            values[key] = raw[key]
    return ExecutorSpec(kind=kind, partition=str(raw.get("partition") or ""), **values)


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise SpecError(f"{path}: cannot read it ({exc.strerror})") from exc
    except ValueError as exc:
        raise SpecError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise SpecError(f"{path}: must hold a JSON object")
    return data


def load_prep(job_dir: Path) -> PrepSpec:
    raw = read_json(job_dir / "prep.json")
    sources = raw.get("sources")
    if not isinstance(sources, list) or not sources:
        raise SpecError("sources: the recipe has no sources to prepare")
    specs = [_source(s, i, weighted=True) for i, s in enumerate(sources)]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise SpecError("sources: a source appears twice")
    try:
        settings = prep_settings.validate(raw.get("settings"))
    except prep_settings.SettingsInvalid as exc:
        raise SpecError(f"settings: {exc}") from exc
    shard_tokens = raw.get("shard_tokens", 1 << 24)
    if not isinstance(shard_tokens, int) or shard_tokens < 1024:
        raise SpecError(f"shard_tokens: must be a whole number of at least 1024, not {shard_tokens!r}")
    return PrepSpec(
        job_dir=job_dir,
        job_id=int(raw.get("job_id") or 0),
        recipe=raw.get("recipe") or {},
        sources=specs,
        settings=settings,
        executor=_executor(raw.get("executor")),
        shard_tokens=shard_tokens,
    )


def load_count(job_dir: Path) -> SourceSpec:
    raw = read_json(job_dir / "count.json")
    return _source(raw.get("source"), 0, weighted=False)
