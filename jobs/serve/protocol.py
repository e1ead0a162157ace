"""The OpenAI request fields the server accepts, checked one by one so a bad request gets a 4xx naming the fix.

Accepted (the rest of OpenAI's fields are ignored when absent/neutral, refused when they ask for something the
engine cannot do, e.g. ``n`` > 1, ``logprobs``, ``echo``, penalties):
- both endpoints: ``model`` (must be the served name when given), ``max_tokens`` (chat also
  ``max_completion_tokens``), ``temperature`` [0, 2], ``top_p`` (0, 1], ``top_k`` (vLLM's extension; 0 or -1 = off),
  ``seed``, ``stop`` (a string or up to 4), ``stream``, ``stream_options.include_usage``, ``ignore_eos`` (vLLM's).
- completions: ``prompt`` as a string, a list of strings, a list of token ids or a list of such lists (one choice
  per prompt).
- chat: ``messages``, each ``{"role": "system"|"user"|"assistant", "content": str or [{"type": "text", ...}]}``.

Chat template (the models have none of their own): each message becomes ``<|role|>\\n{content}\\n`` and the prompt
ends with ``<|assistant|>\\n``. Generation also stops at the next ``<|user|>``, ``<|system|>`` or ``<|assistant|>``
(added to the request's own stop strings) so the model does not write the user's next turn.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobs.engine.sampling import SamplingParams

CHAT_ROLES = ("system", "user", "assistant")
CHAT_STOPS = ("<|user|>", "<|system|>", "<|assistant|>")
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
CHAT_DEFAULT_MAX_TOKENS = 256  # OpenAI's is "the rest of the context"; a random or tiny model would fill it


class RequestError(Exception):
    def __init__(self, message: str, *, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.code = code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": "invalid_request_error", "param": self.param,
                          "code": self.code}}  # fmt: skip


@dataclass(kw_only=True)
class ParsedRequest:
    prompts: list[list[int]]
    params: SamplingParams
    stream: bool
    include_usage: bool


def chat_prompt(messages: list[dict]) -> str:
    """The chat template described in the module docstring."""
    parts = [f"<|{m['role']}|>\n{m['content']}\n" for m in messages]
    return "".join(parts) + "<|assistant|>\n"


def _number(body: dict, key: str, *, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{key}: expected a number, got {value!r}", param=key)
    if value < low or (low_open and value == low) or value > high:
        bracket = "(" if low_open else "["
        raise RequestError(f"{key}: {value} is out of range; use a value in {bracket}{low}, {high}]", param=key)
    return float(value)


def _integer(body: dict, key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{key}: expected an integer, got {value!r}", param=key)
    return value


def _unsupported(body: dict) -> None:
    n = _integer(body, "n")
    if n is not None and n != 1:
        raise RequestError("n: only n=1 is supported; send separate requests for more samples", param="n")
    best_of = _integer(body, "best_of")
    if best_of is not None and best_of != 1:
        raise RequestError("best_of: only 1 is supported", param="best_of")
    for key in ("logprobs", "top_logprobs", "echo"):
        if body.get(key) not in (None, False, 0):
            raise RequestError(f"{key}: not supported by this server; leave it out", param=key)
    for key in ("presence_penalty", "frequency_penalty"):
        if body.get(key) not in (None, 0, 0.0):
            raise RequestError(f"{key}: not supported by this server; leave it out or send 0", param=key)


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise RequestError("stop: expected a non-empty string or a list of up to 4 non-empty strings", param="stop")
    return tuple(stop)


def check_model(body: dict, served_name: str) -> None:
    model = body.get("model")
    if model is None:
        return
    if not isinstance(model, str):
        raise RequestError(f"model: expected a string, got {model!r}", param="model")
    if model != served_name:
        raise RequestError(f"model: '{model}' is not served here; use '{served_name}' (GET /v1/models lists it)",
                           param="model", status=404, code="model_not_found")  # fmt: skip


def _prompts(body: dict, encode, vocab: int) -> list[list[int]]:
    prompt = body.get("prompt")
    fix = "send a non-empty string, a list of strings, or a list of token ids"
    if prompt is None:
        raise RequestError(f"prompt: required; {fix}", param="prompt")
    if isinstance(prompt, str):
        prompt = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise RequestError(f"prompt: empty or of the wrong type; {fix}", param="prompt")
    out = []
    for i, p in enumerate(prompt):
        if isinstance(p, str):
            if not p:
                raise RequestError(f"prompt: prompt {i} is an empty string; {fix}", param="prompt")
            ids = encode(p)
        elif isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            if any(not 0 <= t < vocab for t in p):
                raise RequestError(f"prompt: token ids must be in [0, {vocab})", param="prompt")
            ids = list(p)
        else:
            raise RequestError(f"prompt: prompt {i} is empty or of the wrong type; {fix}", param="prompt")
        if not ids:
            raise RequestError(f"prompt: prompt {i} encodes to no tokens; {fix}", param="prompt")
        out.append(ids)
    if len(out) > 64:
        raise RequestError("prompt: at most 64 prompts per request", param="prompt")
    return out


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages: required, a non-empty list of {\"role\", \"content\"} objects",
                           param="messages")  # fmt: skip
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RequestError(f"{where}: expected an object with role and content", param=where)
        role = m.get("role")
        if role not in CHAT_ROLES:
            raise RequestError(f"{where}.role: {role!r}; use one of {', '.join(CHAT_ROLES)}", param=f"{where}.role")
        content = m.get("content")
        if isinstance(content, list):
            texts = [
                p["text"]
                for p in content
                if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            ]
            if len(texts) != len(content):
                raise RequestError(f"{where}.content: only text parts are supported", param=f"{where}.content")
            content = "".join(texts)
        if not isinstance(content, str):
            raise RequestError(f"{where}.content: expected a string", param=f"{where}.content")
        out.append({"role": role, "content": content})
    if all(not m["content"].strip() for m in out):
        raise RequestError("messages: every message is empty; send some text", param="messages")
    return out


def parse_request(body: object, *, chat: bool, served_name: str, encode, vocab: int, max_seq_len: int) -> ParsedRequest:
    """Check an OpenAI request body; raises RequestError (4xx) naming the field and the fix."""
    if not isinstance(body, dict):
        raise RequestError("request body: expected a JSON object")
    check_model(body, served_name)
    _unsupported(body)
    if chat:
        prompts = [encode(chat_prompt(_messages(body)))]
        prompt_param = "messages"
    else:
        prompts = _prompts(body, encode, vocab)
        prompt_param = "prompt"
    longest = max(len(p) for p in prompts)
    if longest >= max_seq_len:
        raise RequestError(f"{prompt_param}: {longest} tokens, but the context is {max_seq_len} tokens including the "
                           "output; shorten it", param=prompt_param, code="context_length_exceeded")  # fmt: skip
    room = max_seq_len - longest
    key = "max_tokens"
    max_tokens = _integer(body, key)
    if chat and max_tokens is None and body.get("max_completion_tokens") is not None:
        key = "max_completion_tokens"
        max_tokens = _integer(body, key)
    if max_tokens is None:
        max_tokens = min(CHAT_DEFAULT_MAX_TOKENS if chat else COMPLETION_DEFAULT_MAX_TOKENS, room)
    elif max_tokens < 1:
        raise RequestError(f"{key}: {max_tokens}; use at least 1", param=key)
    elif max_tokens > room:
        raise RequestError(f"{key}: {max_tokens} plus the {longest}-token prompt exceeds the context of {max_seq_len};"
                           f" use at most {room}", param=key, code="context_length_exceeded")  # fmt: skip
    temperature = _number(body, "temperature", default=1.0, low=0.0, high=2.0)
    top_p = _number(body, "top_p", default=1.0, low=0.0, high=1.0, low_open=True)
    top_k = _integer(body, "top_k")
    if top_k is not None and top_k < -1:
        raise RequestError(f"top_k: {top_k}; use -1 or 0 (off) or a positive integer", param="top_k")
    seed = _integer(body, "seed")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(f"stream: expected true or false, got {stream!r}", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError("stream_options: expected an object", param="stream_options")
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise RequestError(f"ignore_eos: expected true or false, got {ignore_eos!r}", param="ignore_eos")
    stop = _stop(body) + (CHAT_STOPS if chat else ())
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=max(top_k or 0, 0),
                            seed=seed, stop=stop, ignore_eos=ignore_eos)  # fmt: skip
    return ParsedRequest(prompts=prompts, params=params, stream=stream,
                         include_usage=bool(options.get("include_usage")))  # fmt: skip
