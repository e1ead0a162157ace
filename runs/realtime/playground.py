"""The playground websocket: a prompt in, the endpoint's streamed tokens out, as they are generated.

The browser never talks to the endpoint: the consumer holds the endpoint's bearer key, checks the user's role and
the parameters, and relays OpenAI-style SSE chunks from ``/v1/completions`` as ``{"type": "token"}`` messages.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

import httpx
from channels.db import database_sync_to_async

from runs.realtime.consumers import CLOSE_FORBIDDEN, CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED, JsonFrames

MAX_PROMPT_CHARS = 20_000
LIMITS = {"max_tokens": (1, 4096), "temperature": (0.0, 2.0), "top_p": (0.01, 1.0)}


def playground_params(content: Any) -> dict:
    """The request the browser sent, checked; ValueError names the field and the fix."""
    if not isinstance(content, dict):
        raise ValueError("send a JSON object with prompt, max_tokens, temperature and top_p")
    prompt = content.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt: type something for the model to continue")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"prompt: at most {MAX_PROMPT_CHARS:,} characters; shorten it")
    params: dict[str, Any] = {"prompt": prompt}
    for name, (low, high) in LIMITS.items():
        value = content.get(name, low if name == "max_tokens" else high)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{name}: must be a number from {low} to {high}")
        if name == "max_tokens" and value != int(value):
            raise ValueError("max_tokens: must be a whole number")
        if not low <= value <= high:
            raise ValueError(f"{name}: {value} is outside {low} to {high}; pick a value in that range")
        params[name] = int(value) if name == "max_tokens" else float(value)
    return params


class PlaygroundConsumer(JsonFrames):
    deployment: Any = None
    generation: asyncio.Task | None = None

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if not await database_sync_to_async(user.has_perm)("runs.use_playground"):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        from runs.models import Deployment

        pk = int(self.scope["url_route"]["kwargs"]["deployment_id"])
        self.deployment = await database_sync_to_async(
            Deployment.objects.select_related("artifact").filter(pk=pk).first
        )()
        if self.deployment is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        await self.accept()

    async def disconnect(self, code):
        if self.generation is not None:
            self.generation.cancel()

    async def receive_json(self, content, **kwargs):
        if self.generation is not None and not self.generation.done():
            await self.send_json({"type": "error", "message": "A generation is still streaming; wait for it to end."})
            return
        try:
            params = playground_params(content)
        except ValueError as exc:
            await self.send_json({"type": "error", "message": str(exc)})
            return
        await database_sync_to_async(self.deployment.refresh_from_db)()
        if self.deployment.status != "running" or not self.deployment.url:
            await self.send_json(
                {"type": "error", "message": f"The endpoint is {self.deployment.status}; prompts need a running one."}
            )
            return
        from runs.services.deployments import deployment_prompt_audit

        audit = {k: v for k, v in params.items() if k != "prompt"} | {"prompt_chars": len(params["prompt"])}
        await database_sync_to_async(deployment_prompt_audit)(
            deployment=self.deployment, actor=self.scope["user"], params=audit
        )
        self.generation = asyncio.create_task(self._relay(params))

    async def _relay(self, params: dict) -> None:
        from runs.services.deployments import deployment_api_key

        key = deployment_api_key(self.deployment)
        body = {"model": self.deployment.name, "stream": True, "stream_options": {"include_usage": True}, **params}
        started = time.perf_counter()
        first = None
        chunks = 0
        usage: dict = {}
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=120.0)) as client:
                async with client.stream(
                    "POST",
                    f"{self.deployment.url}/v1/completions",
                    json=body,
                    headers={"Authorization": f"Bearer {key}"},
                ) as response:
                    if response.status_code != 200:
                        await response.aread()
                        await self.send_json({"type": "error", "message": _error_text(response)})
                        return
                    async for line in response.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            break
                        chunk = json.loads(data)
                        usage = chunk.get("usage") or usage
                        for choice in chunk.get("choices") or []:
                            text = choice.get("text") or ""
                            if text:
                                first = first or time.perf_counter()
                                chunks += 1
                                await self.send_json({"type": "token", "text": text})
        except (httpx.HTTPError, ValueError) as exc:
            await self.send_json({"type": "error", "message": f"The endpoint stopped answering: {type(exc).__name__}"})
            return
        elapsed = time.perf_counter() - started
        tokens = int(usage.get("completion_tokens") or chunks)
        decode_s = time.perf_counter() - (first or started)
        await self.send_json(
            {
                "type": "done",
                "completion_tokens": tokens,
                "ttft_ms": round(((first or time.perf_counter()) - started) * 1000, 1),
                "tokens_per_s": round(tokens / decode_s, 1) if decode_s > 0 else None,
                "seconds": round(elapsed, 3),
            }
        )


def _error_text(response: httpx.Response) -> str:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:300]
    return f"The endpoint refused the request (HTTP {response.status_code}): {message}"
