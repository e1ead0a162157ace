"""Metrics reporter for rank 0 of a training job.

Every record is appended to RUN_DIR/metrics.jsonl and flushed before `log()` returns: that file is the durable
record. A background thread sends the part of the file that the control plane has not yet accepted, reading it
from the file (never from memory) in batches, and stores how far it got in RUN_DIR/metrics.acked. So:
- `log()` costs one JSON encode and one buffered write; it never waits on the network, and a sender that is far
  behind needs no memory, however long the outage.
- A batch goes out in the ingest API's columns form (docs/run-config.md): each key's steps and values as two lists,
  the other records (events, heartbeats) as they are in the file.
- After an outage, or after the process restarts, the backlog is sent from metrics.acked on, and a record the
  control plane accepted is not sent again.
- A 4xx answer other than 408/429 (bad token, unknown run, malformed batch) will not get better by retrying:
  the sender says so once on stderr and stops; the file keeps growing, and a later reporter on the same run
  directory (a restart with a fixed token) sends the backlog.
One reporter per run directory at a time.
"""

import http.client
import json
import math
import os
import random
import re
import sys
import threading
import time
import urllib.error
import urllib.request

from jobs.common.atomic import write_atomic
from jobs.common.system_metrics import SystemSampler

METRICS_FILE = "metrics.jsonl"
ACKED_FILE = "metrics.acked"
TOKEN_FILE = "token"
TOKEN_ENV = "CP_RUN_TOKEN"
KEY_RE = re.compile(r"[A-Za-z0-9_./-]{1,100}\Z")
RESERVED_FIELDS = frozenset({"kind", "type", "step", "time"})


def _stderr(message: str) -> None:
    print(f"reporter: {message}", file=sys.stderr, flush=True)


def _json_value(value):
    """JSON cannot carry NaN or infinity; event fields keep them as the strings "nan", "inf", "-inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if hasattr(value, "item"):  # numpy scalars and one-element tensors
        return _json_value(value.item())
    return str(value)


def ingest_body(records: list[dict]) -> bytes:
    """The ingest API's body for records, in its columns form (docs/run-config.md): the points of metrics records as
    a list of steps and one of values per key, every other record as it is. A metrics record the API would refuse
    (no values, a step that is not an integer) goes as a record too, so that the answer names it."""
    series: dict[str, tuple[list, list]] = {}
    others = []
    for record in records:
        values, step = record.get("values"), record.get("step")
        if record.get("kind") == "metrics" and type(values) is dict and values and type(step) is int:
            for key, value in values.items():
                column = series.get(key)
                if column is None:
                    column = series[key] = ([], [])
                column[0].append(step)
                column[1].append(value)
        else:
            others.append(record)
    doc: dict = {"series": {key: {"steps": steps, "values": vals} for key, (steps, vals) in series.items()}}
    if others or not series:
        doc["records"] = others
    try:
        text = json.dumps(doc, separators=(",", ":"), allow_nan=False)
    except ValueError:  # a NaN/infinite value that another writer put in the file: as the API's strings
        text = json.dumps(_json_value(doc), separators=(",", ":"))
    return text.encode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # urllib would turn a redirected POST into a GET without the body and report success.
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class Reporter:
    def __init__(
        self,
        run_dir: str,
        ingest_url: str | None,
        token: str | None,
        enabled: bool = True,
        batch_size: int = 50,
        flush_interval_s: float = 1.0,
        *,
        every_n_steps: int = 1,
        request_timeout_s: float = 10.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        system_metrics_s: float | None = None,
        wall_time: bool = False,
    ):
        """`system_metrics_s`: how often log() adds the machine's figures (jobs.common.system_metrics: CPU, host
        memory, network, and GPUs through NVML where installed) as sys/* keys; None leaves them out. `wall_time`:
        each metrics record also carries `wall_time` (seconds since the epoch), the charts' wall-time axis. The
        control plane's run.json asks for both (runs.services.rundir); a run directory's reporter follows it."""
        self.enabled = enabled
        self.run_dir = run_dir
        self.ingest_url = ingest_url
        self.batch_size = max(1, int(batch_size))
        self.flush_interval_s = float(flush_interval_s)
        self._sent_first_metrics = False
        self.every_n_steps = max(1, int(every_n_steps))
        self.request_timeout_s = request_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.halted: str | None = None  # why the sender gave up for good, if it did
        self.stats = {"posts": 0, "failures": 0, "records_sent": 0}
        self._token = token
        self._closed = False
        self._warned: set[str] = set()
        self._good_keys: set[str] = set()
        self._thread = None
        self._system = None
        self._wall_time = wall_time
        if not enabled:
            return
        if system_metrics_s:
            self._system = SystemSampler(interval_s=system_metrics_s)

        os.makedirs(run_dir, exist_ok=True)
        self.metrics_path = os.path.join(run_dir, METRICS_FILE)
        self.acked_path = os.path.join(run_dir, ACKED_FILE)
        self._write_lock = threading.Lock()
        self._file = open(self.metrics_path, "ab")
        self._end_partial_line()
        self._acked = self._read_acked()
        self._unsent_hint = 0
        self._wake = threading.Event()
        self._hurry = threading.Event()
        self._deadline: float | None = None
        self._opener = urllib.request.build_opener(_NoRedirect)
        if ingest_url:
            self._thread = threading.Thread(target=self._run, name="metrics-reporter", daemon=True)
            self._thread.start()
            if self._file.tell() > self._acked:
                self._wake.set()

    @classmethod
    def from_run_dir(cls, run_dir: str, enabled: bool = True, **kwargs) -> "Reporter":
        """A reporter configured by run.json's `reporter` section; the token comes from $CP_RUN_TOKEN or
        RUN_DIR/token. A disabled reporter (ranks other than 0) reads nothing."""
        if not enabled:
            return cls(run_dir, None, None, enabled=False)
        with open(os.path.join(run_dir, "run.json")) as f:
            section = json.load(f).get("reporter") or {}
        token = os.environ.get(TOKEN_ENV)
        token_path = os.path.join(run_dir, TOKEN_FILE)
        if not token and os.path.isfile(token_path):
            with open(token_path) as f:
                token = f.read().strip() or None
        options = {
            "batch_size": section.get("batch_size", 50),
            "flush_interval_s": section.get("flush_interval_s", 1.0),
            "every_n_steps": section.get("every_n_steps", 1),
            "system_metrics_s": section.get("system_metrics_s"),
            "wall_time": section.get("wall_time", False),
            **kwargs,
        }
        return cls(run_dir, section.get("ingest_url"), token, enabled=True, **options)

    # Recording (caller's thread)

    def log(self, step: int, values: dict) -> None:
        """Record metric values for a step. Keys outside [A-Za-z0-9_./-]{1,100} and non-finite values are
        dropped with a one-time warning, because the ingest API would refuse the whole batch."""
        if not self.enabled or step % self.every_n_steps:
            return
        clean = {}
        for key, value in values.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                self._warn_once(f"value:{key}", f"metric {key!r} is not a number ({value!r}); not recorded")
                continue
            if key not in self._good_keys and not self._check_key(key):
                continue
            if not math.isfinite(number):
                self._warn_once(
                    f"nan:{key}", f"metric {key!r} is {number} at step {step}; non-finite values are not sent"
                )
            else:
                clean[key] = number
        if clean:
            now = time.time()
            if self._system is not None:
                clean.update(self._system.sample())
            if self._wall_time:
                clean.setdefault("wall_time", now)
            self._append({"kind": "metrics", "step": int(step), "time": now, "values": clean})

    def _check_key(self, key) -> bool:
        if isinstance(key, str) and KEY_RE.match(key):
            self._good_keys.add(key)
            return True
        self._warn_once(f"key:{key}", f"metric key {key!r} is not [A-Za-z0-9_./-]{{1,100}}; not recorded")
        return False

    def event(self, type: str, step: int, **fields) -> None:
        if not self.enabled:
            return
        reserved = RESERVED_FIELDS & fields.keys()
        if reserved:
            raise ValueError(f"event fields may not be named {sorted(reserved)}")
        record = {"kind": "event", "type": type, "step": int(step), "time": time.time()}
        record.update(_json_value(fields))
        self._append(record)

    def heartbeat(self, step: int) -> None:
        if self.enabled:
            self._append({"kind": "heartbeat", "step": int(step), "time": time.time()})

    def _append(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":"), allow_nan=False).encode("utf-8") + b"\n"
        with self._write_lock:
            if self._closed:
                self._warn_once("closed", "record after close() dropped")
                return
            self._file.write(line)
            self._file.flush()
            self._unsent_hint += 1
            # The first metrics go out at once: a newly launched run shows its first point without waiting for
            # the flush interval.
            first_metrics = record.get("kind") == "metrics" and not self._sent_first_metrics
            if first_metrics:
                self._sent_first_metrics = True
            if first_metrics or self._unsent_hint >= self.batch_size:
                self._wake.set()

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            _stderr(message)

    # Files

    def _end_partial_line(self) -> None:
        # A process killed mid-write leaves a line without its newline; end it so that the next record starts
        # on a line of its own (the sender skips the broken one).
        size = self._file.tell()
        if size:
            with open(self.metrics_path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    self._file.write(b"\n")
                    self._file.flush()

    def _read_acked(self) -> int:
        try:
            with open(self.acked_path) as f:
                acked = int(f.read().strip() or 0)
        except FileNotFoundError:
            return 0
        except ValueError:
            _stderr(f"{self.acked_path} is unreadable; resending {self.metrics_path} from the start")
            return 0
        size = os.path.getsize(self.metrics_path)
        if not 0 <= acked <= size:
            _stderr(
                f"{self.acked_path} says {acked} bytes but {self.metrics_path} has {size}; resending from the start"
            )
            return 0
        return acked

    def _write_acked(self, offset: int) -> None:
        write_atomic(self.acked_path, f"{offset}\n")
        self._acked = offset

    @property
    def acked_offset(self) -> int:
        return self._acked if self.enabled else 0

    # Sending (background thread)

    def _read_batch(self, reader) -> tuple[list[dict], int]:
        """Up to batch_size complete, valid records after the acked offset, and the offset just past them."""
        reader.seek(self._acked)
        records: list[dict] = []
        end = self._acked
        while len(records) < self.batch_size:
            line = reader.readline()
            if not line.endswith(b"\n"):
                break  # end of file, or a line still being written
            offset, end = end, end + len(line)
            body = line.strip()
            if not body:
                continue
            try:
                record = json.loads(body)
            except ValueError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            else:
                self._warn_once(f"line:{offset}", f"skipping an unreadable line at byte {offset} of {METRICS_FILE}")
        return records, end

    def _post(self, records: list[dict]) -> tuple[str, str, float | None]:
        """("ok" | "retry" | "fatal", description, server-requested delay in seconds)."""
        if self.ingest_url is None:
            return "fatal", "no ingest URL to post to", None
        body = ingest_body(records)
        headers = {"Content-Type": "application/json", "User-Agent": "cp-job-reporter/1"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(self.ingest_url, data=body, headers=headers, method="POST")
        timeout = self.request_timeout_s
        if self._deadline is not None:
            timeout = max(0.05, min(timeout, self._deadline - time.monotonic()))
        try:
            with self._opener.open(request, timeout=timeout) as response:
                response.read()
                return "ok", str(response.status), None
        except urllib.error.HTTPError as e:
            try:
                detail = e.read(300).decode("utf-8", "replace").strip()
            except (OSError, http.client.HTTPException):
                detail = ""
            described = f"HTTP {e.code} from {self.ingest_url}" + (f": {detail}" if detail else "")
            retry_after = None
            try:
                retry_after = float(e.headers.get("Retry-After", ""))
            except (TypeError, ValueError):
                pass
            if e.code in (408, 429) or e.code >= 500:
                return "retry", described, retry_after
            return "fatal", described, None
        except (OSError, ValueError, http.client.HTTPException) as e:  # refused, reset, timed out, garbled
            return "retry", f"{self.ingest_url} unreachable ({getattr(e, 'reason', e)})", None

    def _run(self) -> None:
        try:
            self._send_loop()
        except Exception as e:  # a broken sender must not take training down; the file keeps every record
            self.halted = f"sender failed: {e!r}"
            _stderr(f"{self.halted}; metrics stay in {self.metrics_path} for the next reporter on this run directory")

    def _send_loop(self) -> None:
        failures = 0
        with open(self.metrics_path, "rb") as reader:
            while True:
                if self._deadline is None:
                    self._wake.wait(self.flush_interval_s)
                self._wake.clear()
                with self._write_lock:
                    self._unsent_hint = 0
                while True:
                    if self._deadline is not None and time.monotonic() >= self._deadline:
                        return
                    records, end = self._read_batch(reader)
                    if end == self._acked:
                        break
                    if not records:  # only unreadable lines: nothing to send, just move past them
                        self._write_acked(end)
                        continue
                    outcome, detail, retry_after = self._post(records)
                    self.stats["posts"] += 1
                    if outcome == "ok":
                        self._write_acked(end)
                        self.stats["records_sent"] += len(records)
                        if failures:
                            _stderr(f"{self.ingest_url} reachable again; sending the backlog")
                        failures = 0
                        continue
                    self.stats["failures"] += 1
                    if outcome == "fatal":
                        self.halted = detail
                        _stderr(
                            f"{detail}. Not retrying: metrics stay in {self.metrics_path} and are sent by the "
                            f"next reporter on this run directory (check the token in RUN_DIR/{TOKEN_FILE} "
                            f"or ${TOKEN_ENV}, and reporter.ingest_url)"
                        )
                        return
                    if failures == 0:
                        _stderr(f"{detail}; retrying with back-off, metrics are kept in {self.metrics_path}")
                    failures += 1
                    self._sleep_backoff(failures, retry_after)
                if self._deadline is not None:
                    return

    def _sleep_backoff(self, failures: int, retry_after: float | None) -> None:
        ceiling = min(self.backoff_max_s, self.backoff_initial_s * 2 ** min(failures - 1, 30))
        delay = random.uniform(ceiling / 2, ceiling)  # jitter spreads many jobs' retries after an outage
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max_s))
        if self._deadline is not None:
            if self._hurry.is_set():
                self._hurry.clear()  # close() was called: one immediate retry, then short waits
                return
            delay = min(delay, max(0.0, self._deadline - time.monotonic()), 0.5)
        self._hurry.wait(delay)

    # Shutdown

    def close(self, timeout: float = 10.0) -> None:
        """Send what can be sent within `timeout` seconds, then stop; the rest stays in the file for later."""
        if not self.enabled or self._closed:
            return
        with self._write_lock:
            self._closed = True
        if self._thread is not None:
            self._deadline = time.monotonic() + max(0.0, timeout)
            self._hurry.set()
            self._wake.set()
            # A request still hanging at the deadline is abandoned to the daemon thread; its records stay unacked.
            self._thread.join(max(0.0, timeout) + 0.05)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if self.ingest_url and self.halted is None and os.path.getsize(self.metrics_path) > self._acked:
            _stderr(
                f"closing with {os.path.getsize(self.metrics_path) - self._acked} bytes of metrics not yet "
                f"accepted; they stay in {self.metrics_path} for the next reporter on this run directory"
            )

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
