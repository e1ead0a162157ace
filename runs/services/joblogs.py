"""A job's stdout/stderr as the run page shows them: the tail of either file, filtered by rank and text, and the new
lines the watcher reads pushed to the run's websocket group as they come.

Only the two files the launcher writes in the run's own directory are read, through a fixed name per stream; a
run directory's file that resolves anywhere else (a symlink) is refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from runs.models import Run
from runs.realtime.broadcast import run_group, send_many

STREAMS = {"stdout": "stdout.log", "stderr": "stderr.log"}
TAIL_BYTES = 4 * 1024 * 1024  # how far back a tail reads; a search looks this far
MAX_LIMIT = 5000
PUSH_LINES = 200  # lines one watcher pass pushes at most per stream; the page reads the rest from the tail
MAX_LINE = 4000  # characters kept of one line
# torch.distributed's "[rank3]: " prefix, and DeepSpeed's "[Rank 3]" in its log_dist lines.
_RANK = re.compile(r"^\[rank(\d+)\]:|\[Rank (\d+)\]")


class LogRefused(ValueError):
    """A request for a log that cannot be answered; `field` names the parameter to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class LogLine:
    text: str
    rank: int | None


@dataclass(frozen=True)
class LogTail:
    stream: str
    lines: list[LogLine]
    matched: int  # lines that passed the filters in the part read (before `limit` cut the oldest)
    size: int  # the file's size in bytes when read: where following continues
    partial: bool  # the file is longer than the part read


def line_rank(text: str) -> int | None:
    match = _RANK.search(text)
    if not match:
        return None
    return int(match.group(1) or match.group(2))


def log_path(run: Run, stream: str) -> Path:
    if stream not in STREAMS:
        raise LogRefused("stream", f"must be one of {', '.join(STREAMS)}, not {stream!r}")
    if not run.run_dir:
        raise LogRefused("run", "the run has not been launched; its job has written no output yet")
    run_dir = Path(run.run_dir).resolve()
    path = (run_dir / STREAMS[stream]).resolve()
    if path.parent != run_dir:
        raise LogRefused("stream", "the log file lies outside the run's directory")
    return path


def log_tail(
    *, run: Run, stream: str = "stdout", rank: int | None = None, query: str = "", limit: int = 500
) -> LogTail:
    """The last `limit` lines of the stream that are of `rank` (when given) and contain `query` (case-insensitive)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise LogRefused("limit", f"must be between 1 and {MAX_LIMIT}, got {limit}")
    if rank is not None and rank < 0:
        raise LogRefused("rank", f"must be a rank number (0 or more), got {rank}")
    path = log_path(run, stream)
    if not path.exists():
        return LogTail(stream, [], 0, 0, False)
    with open(path, "rb") as fh:
        size = fh.seek(0, 2)
        start = max(0, size - TAIL_BYTES)
        fh.seek(start)
        chunk = fh.read(size - start)
    text = chunk.decode("utf-8", "replace")
    lines = text.splitlines()
    if start and lines:
        lines = lines[1:]  # the first line read is cut
    needle = query.casefold()
    kept = []
    for raw in lines:
        raw = raw.split("\r")[-1]  # a progress bar's carriage returns: what the terminal would show
        line_of = line_rank(raw)
        if rank is not None and line_of != rank:
            continue
        if needle and needle not in raw.casefold():
            continue
        kept.append(LogLine(raw[:MAX_LINE], line_of))
    return LogTail(stream, kept[-limit:], len(kept), size, start > 0)


def broadcast_lines(*, run_id: int, stream: str, lines: list[str], offset: int) -> None:
    """Push lines the watcher just read to the run page (only when someone has it open)."""

    def message() -> dict:
        shown = lines[-PUSH_LINES:]
        return {
            "type": "run.log",
            "stream": stream,
            "offset": offset,
            "skipped": len(lines) - len(shown),
            "lines": [{"text": t.split("\r")[-1][:MAX_LINE], "rank": line_rank(t)} for t in shown],
        }

    send_many([(run_group(run_id), message)])


def broadcast_phase(*, run_id: int, compiling: dict | None) -> None:
    send_many([(run_group(run_id), {"type": "run.phase", "compiling": compiling})])


def compiling_now(run: Run) -> dict | None:
    """{"op", "since"} while the watcher has seen DeepSpeed start compiling an op and not finish; else None."""
    if not run.run_dir or run.is_terminal:
        return None
    try:
        state = json.loads((Path(run.run_dir) / "watch_state.json").read_text())
    except (OSError, ValueError):
        return None
    compiling = state.get("compiling") if isinstance(state, dict) else None
    return compiling if isinstance(compiling, dict) else None
