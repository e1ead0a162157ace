"""The decode engine's scheduler: continuous batching of requests over one model's backend.

The backend (``jobs.engine.llama`` or ``jobs.engine.hf``, chosen by ``jobs.engine.loading.load_engine``) owns the
model and its KV cache; the ``Engine`` here decides what runs in each step.

The scheduler (one thread, which owns the model): between decode steps, waiting requests take free slots (a slot is
a batch row of the KV cache) and are prefilled one by one; then one decode step advances every busy slot by a token.
Each new token goes through sampling (``jobs.engine.sampling``), EOS and ``max_tokens`` checks, and incremental
detokenization with stop strings (``jobs.engine.text``); the request's sink gets an ``Event`` per token with the text
that is safe to show. Finished or cancelled requests free their slot at once.

Use from a server: ``engine.start()``, ``engine.submit(ids, params, sink=...)``, ``handle.cancel()``.
Use from a script: ``engine.generate([ids, ...], params)`` drives the scheduler in the calling thread.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from jobs.engine.sampling import SamplingParams, sample_rows
from jobs.engine.text import Detokenizer, Tokenizer

__all__ = ["Engine", "Event", "RequestHandle", "SamplingParams"]

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Event:
    """One step of one request: new text (possibly empty), the new token, and at the end why it finished."""

    text: str
    token_ids: list[int]
    finish_reason: str | None  # "stop" (EOS or a stop string), "length", "cancelled", "error"
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


@dataclass(kw_only=True)
class RequestHandle:
    id: int
    prompt_ids: list[int]
    params: SamplingParams
    sink: Callable[[Event], None] | None = None
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None
    submitted_at: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    finished_at: float | None = None
    _done: threading.Event = field(default_factory=threading.Event)
    _cancelled: bool = False

    def cancel(self) -> None:
        """Stop generating (e.g. the client went away); the slot is freed at the next scheduler step."""
        self._cancelled = True

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)


@dataclass(kw_only=True)
class _Seq:
    handle: RequestHandle
    slot: int
    detok: Detokenizer
    generator: torch.Generator | None
    position: int  # where the next token goes in the cache (= tokens in the cache)
    last_token: int = 0


class Engine:
    def __init__(self, *, backend, tokenizer: Tokenizer, eos_ids: set[int], model_dir: str, load_seconds: float):
        self.backend = backend
        self.tokenizer = tokenizer
        self.eos_ids = set(eos_ids)
        self.model_dir = model_dir
        self.load_seconds = load_seconds
        self.max_batch = backend.max_batch
        self.max_seq_len = backend.max_seq_len
        self._ids = itertools.count(1)
        self._lock = threading.Condition()
        self._pending: deque[RequestHandle] = deque()
        self._free = list(range(self.max_batch))
        self._active: dict[int, _Seq] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._generator = torch.Generator(device=backend.device).manual_seed(0)
        self._recent: deque[tuple[float, int]] = deque()
        self.generated_tokens = 0
        self.steps = 0
        # Prompt tokens prefilled together at most (the batched prefill's mask is tokens x tokens).
        self.prefill_tokens = max(2048, min(self.max_seq_len, 4096))

    # ---- public -----------------------------------------------------------------------------------------------
    def info(self) -> dict:
        return {**self.backend.info(), "max_batch": self.max_batch, "max_seq_len": self.max_seq_len,
                "load_seconds": round(self.load_seconds, 2)}  # fmt: skip

    def check(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """Raise ValueError naming the problem when a request cannot run (the server checks first for 4xx)."""
        if not prompt_ids:
            raise ValueError("prompt: empty")
        if len(prompt_ids) >= self.max_seq_len:
            raise ValueError(f"prompt: {len(prompt_ids)} tokens, the context is {self.max_seq_len}")
        if params.max_tokens < 1 or len(prompt_ids) + params.max_tokens > self.max_seq_len:
            raise ValueError(
                f"max_tokens: {params.max_tokens} with a {len(prompt_ids)}-token prompt exceeds the context of "
                f"{self.max_seq_len}; at most {self.max_seq_len - len(prompt_ids)}"
            )
        vocab = self.backend.vocab
        if any(not 0 <= t < vocab for t in prompt_ids):
            raise ValueError(f"prompt: token ids must be in [0, {vocab})")

    def submit(self, prompt_ids: list[int], params: SamplingParams, *, sink: Callable[[Event], None] | None = None) -> RequestHandle:  # fmt: skip
        self.check(prompt_ids, params)
        handle = RequestHandle(id=next(self._ids), prompt_ids=list(prompt_ids), params=params, sink=sink)
        with self._lock:
            self._pending.append(handle)
            self._lock.notify()
        return handle

    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]) -> list[RequestHandle]:
        """Submit all and wait; drives the scheduler here when no engine thread is running."""
        plist = params if isinstance(params, list) else [params] * len(prompts)
        handles = [self.submit(p, sp) for p, sp in zip(prompts, plist, strict=True)]
        if self._thread is None:
            while not all(h.done for h in handles):
                self.step()
        else:
            for h in handles:
                h.wait()
        return handles

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="decode-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    @property
    def active_requests(self) -> int:
        return len(self._active) + len(self._pending)

    def tokens_per_second(self, window: float = 10.0) -> float:
        """Generated tokens per second over the last ``window`` seconds (all requests together)."""
        now = time.perf_counter()
        recent = [(t, n) for t, n in list(self._recent) if now - t <= window]
        if not recent:
            return 0.0
        span = max(now - recent[0][0], 1e-3)
        return sum(n for _, n in recent) / span

    # ---- scheduler --------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._pending and not self._active:
                    self._lock.wait()
                if self._stopping:
                    break
            try:
                self.step()
            except Exception as exc:  # the engine must outlive one bad step; its requests fail with the reason
                log.exception("decode step failed")
                self._fail_all(f"{type(exc).__name__}: {exc}")
        self._fail_all("server shutting down", reason="cancelled")

    def step(self) -> None:
        """Admit waiting requests into free slots (one prefill pass for all of them, up to ``prefill_tokens``
        prompt tokens), then one decode step for all busy slots."""
        self._drop_cancelled()
        admitted: list[_Seq] = []
        tokens = 0
        while True:
            with self._lock:
                if not self._pending or not self._free:
                    break
                handle = self._pending[0]
                if admitted and tokens + len(handle.prompt_ids) > self.prefill_tokens:
                    break
                self._pending.popleft()
                slot = heapq.heappop(self._free)
            if handle._cancelled:
                with self._lock:
                    heapq.heappush(self._free, slot)
                self._finish_handle(handle, "cancelled")
                continue
            admitted.append(self._new_seq(handle, slot))
            tokens += len(handle.prompt_ids)
        if admitted:
            self._prefill(admitted)
        if self._active:
            self._decode()

    def _new_seq(self, handle: RequestHandle, slot: int) -> _Seq:
        p = handle.params
        generator = None
        if p.seed is not None and not p.greedy:
            generator = torch.Generator(device=self.backend.device).manual_seed(p.seed)
        seq = _Seq(handle=handle, slot=slot, generator=generator, position=len(handle.prompt_ids),
                   detok=Detokenizer(tokenizer=self.tokenizer, prompt_ids=handle.prompt_ids, stop=p.stop))  # fmt: skip
        self._active[slot] = seq
        return seq

    def _prefill(self, seqs: list[_Seq]) -> None:
        try:
            logits = self.backend.prefill_many(items=[(s.slot, s.handle.prompt_ids) for s in seqs])
            tokens = sample_rows(logits=logits, params=[s.handle.params for s in seqs],
                                 generators=[s.generator for s in seqs], default_generator=self._generator)  # fmt: skip
        except Exception as exc:
            log.exception("prefill failed")
            for seq in seqs:
                self._end(seq, "error", error=f"{type(exc).__name__}: {exc}")
            return
        for seq, token in zip(seqs, tokens, strict=True):
            self._accept(seq, token)
        self._count(len(seqs))

    def _decode(self) -> None:
        seqs = sorted(self._active.values(), key=lambda s: s.slot)
        logits = self.backend.decode(rows=[(s.slot, s.last_token, s.position) for s in seqs])
        rows = logits if len(seqs) == logits.shape[0] else logits[[s.slot for s in seqs]]
        tokens = sample_rows(logits=rows, params=[s.handle.params for s in seqs],
                             generators=[s.generator for s in seqs], default_generator=self._generator)  # fmt: skip
        for seq, token in zip(seqs, tokens, strict=True):
            seq.position += 1
            self._accept(seq, token)
        self._count(len(seqs))
        self.steps += 1

    def _accept(self, seq: _Seq, token: int) -> None:
        h, p = seq.handle, seq.handle.params
        now = time.perf_counter()
        if h.first_token_at is None:
            h.first_token_at = now
        h.token_ids.append(token)
        seq.last_token = token
        if token in self.eos_ids and not p.ignore_eos:
            self._emit(seq, seq.detok.flush(), [token], "stop")
            return
        text, stopped = seq.detok.add(token)
        if stopped:
            self._emit(seq, text, [token], "stop")
        elif len(h.token_ids) >= p.max_tokens:
            self._emit(seq, text + seq.detok.flush(), [token], "length")
        else:
            self._emit(seq, text, [token], None)

    def _emit(self, seq: _Seq, text: str, token_ids: list[int], finish: str | None) -> None:
        h = seq.handle
        h.text += text
        if finish is not None:
            self._release(seq)
            h.finish_reason = finish
            h.finished_at = time.perf_counter()
        event = Event(text=text, token_ids=token_ids, finish_reason=finish, prompt_tokens=len(h.prompt_ids),
                      completion_tokens=len(h.token_ids))  # fmt: skip
        self._send(h, event)
        if finish is not None:
            h._done.set()

    def _send(self, h: RequestHandle, event: Event) -> None:
        if h.sink is not None:
            try:
                h.sink(event)
            except Exception:  # a broken consumer must not stop the engine
                log.exception("request %s: sink failed", h.id)
                h.cancel()

    def _release(self, seq: _Seq) -> None:
        if self._active.get(seq.slot) is seq:
            del self._active[seq.slot]
            self.backend.release(slot=seq.slot)
            with self._lock:
                heapq.heappush(self._free, seq.slot)

    def _end(self, seq: _Seq, reason: str, *, error: str | None = None) -> None:
        self._release(seq)
        self._finish_handle(seq.handle, reason, error=error)

    def _finish_handle(self, h: RequestHandle, reason: str, *, error: str | None = None) -> None:
        h.finish_reason = reason
        h.error = error
        h.finished_at = time.perf_counter()
        self._send(h, Event(text="", token_ids=[], finish_reason=reason, prompt_tokens=len(h.prompt_ids),
                            completion_tokens=len(h.token_ids), error=error))  # fmt: skip
        h._done.set()

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self._active.values() if s.handle._cancelled]:
            self._end(seq, "cancelled")

    def _fail_all(self, message: str, *, reason: str = "error") -> None:
        for seq in list(self._active.values()):
            self._end(seq, reason, error=message)
        with self._lock:
            pending, self._pending = list(self._pending), deque()
        for h in pending:
            self._finish_handle(h, reason, error=message)

    def _count(self, n: int) -> None:
        now = time.perf_counter()
        self.generated_tokens += n
        self._recent.append((now, n))
        while self._recent and now - self._recent[0][0] > 60.0:
            self._recent.popleft()
