"""The OpenAI-compatible server as a real subprocess on a free port, driven with the ``openai`` client.

One server (tiny Llama, API key) for the module: completions, chat, streaming, sampling, errors in OpenAI's shape,
auth, /health, /metrics, endpoint.json; the last test stops it with SIGTERM and checks that endpoint.json goes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import httpx
import pytest

from tests.jobs.conftest import PYTHON, REPO, free_port, trainer_env
from tests.jobs.tiny_models import export_llama, hf_greedy

openai = pytest.importorskip("openai")
KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_BODY = 2 * 1024 * 1024
NAME = "tiny-llama"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    model = export_llama(root / "base")
    (root / "key").write_text(KEY + "\n")
    state = root / "state"
    port = free_port()
    cmd = [PYTHON, "-m", "jobs.serve", "--model", str(model), "--port", str(port), "--state-dir", str(state),
           "--served-name", NAME, "--max-batch", "4", "--max-seq-len", "128", "--api-key-file", str(root / "key"),
           "--max-body-bytes", str(MAX_BODY)]  # fmt: skip
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=trainer_env(), stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not (state / "endpoint.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server did not start:\n{(root / 'server.log').read_text()[-4000:]}")
        time.sleep(0.2)
    info = {"proc": proc, "port": port, "state": state, "model": model, "url": f"http://127.0.0.1:{port}",
            "log": root / "server.log"}  # fmt: skip
    yield info
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    log.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=KEY, max_retries=0, timeout=60)


def _post(server, path: str, body, *, key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return httpx.post(server["url"] + path, content=content, headers=headers, timeout=60)


def test_endpoint_json_and_health(server):
    ep = json.loads((server["state"] / "endpoint.json").read_text())
    assert ep["url"] == server["url"] and ep["host"] == "127.0.0.1" and ep["port"] == server["port"]
    assert ep["pid"] == server["proc"].pid and ep["model"] == NAME and ep["engine"] == "native" and ep["started_at"]
    r = httpx.get(server["url"] + "/health")  # a probe without the key: the status only
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = httpx.get(server["url"] + "/health", headers=AUTH)
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["model"] == NAME


def test_a_body_over_the_limit_is_refused_before_it_is_read(server):
    r = _post(server, "/v1/completions", b'{"prompt": "' + b"a" * (MAX_BODY + 10) + b'"}')
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: refused while it streams in
        for _ in range(MAX_BODY // 65536 + 2):
            yield b" " * 65536

    r = httpx.post(server["url"] + "/v1/completions", content=chunks(), headers=AUTH, timeout=60)
    assert r.status_code == 413


def test_a_large_body_is_parsed_off_the_event_loop(server):
    """A body just under the limit (a long prompt, tokenized in a thread) does not hold /health up."""
    body = json.dumps({"model": NAME, "prompt": "word " * (MAX_BODY // 5 - 100), "max_tokens": 1}).encode()
    assert len(body) < MAX_BODY
    answers = {}

    def big():
        answers["big"] = _post(server, "/v1/completions", body)

    thread = threading.Thread(target=big)
    thread.start()
    time.sleep(0.05)
    worst = 0.0
    while thread.is_alive():
        started = time.monotonic()
        assert httpx.get(server["url"] + "/health", timeout=10).status_code == 200
        worst = max(worst, time.monotonic() - started)
        time.sleep(0.02)
    thread.join()
    assert answers["big"].status_code == 400  # the prompt is longer than --max-seq-len, said in OpenAI's shape
    assert worst < 1.0, worst


def test_models_and_auth(server, client):
    assert [m.id for m in client.models.list().data] == [NAME]
    for key in (None, "wrong"):
        r = _post(server, "/v1/completions", {"prompt": "Hi"}, key=key)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    bad = openai.OpenAI(base_url=server["url"] + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_completion_is_the_models_greedy_continuation(server, client):
    from jobs.engine.loading import load_model

    prompt = list(range(40, 52))
    r = client.completions.create(model=NAME, prompt=prompt, max_tokens=8, temperature=0)
    ref = load_model(server["model"], device=__import__("torch").device("cpu"))
    tokens = hf_greedy(ref, prompt, 8, {2})
    from jobs.engine.text import load_tokenizer

    tok = load_tokenizer(server["model"])
    assert r.choices[0].text == tok.decode(prompt[-5:] + tokens)[len(tok.decode(prompt[-5:])) :]
    assert r.usage.prompt_tokens == 12 and r.usage.completion_tokens == len(tokens)
    assert r.usage.total_tokens == 12 + len(tokens)
    assert r.choices[0].finish_reason == ("length" if len(tokens) == 8 else "stop")
    assert r.model == NAME and r.object == "text_completion"


def test_chat_completion(client):
    r = client.chat.completions.create(model=NAME, messages=[{"role": "system", "content": "Be brief."},
                                                            {"role": "user", "content": "Hello there"}],
                                       max_tokens=6, temperature=0)  # fmt: skip
    msg = r.choices[0]
    assert msg.message.role == "assistant" and isinstance(msg.message.content, str)
    assert msg.finish_reason in ("stop", "length") and 0 < r.usage.completion_tokens <= 6
    assert r.usage.prompt_tokens > 5 and r.object == "chat.completion"


def test_streaming_equals_non_streaming(client):
    kw = {"model": NAME, "prompt": "Once upon a time", "max_tokens": 10, "temperature": 0}
    full = client.completions.create(**kw)
    chunks = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.choices[0].finish_reason

    messages = [{"role": "user", "content": "Tell me a story"}]
    chat = client.chat.completions.create(model=NAME, messages=messages, max_tokens=10, temperature=0)
    stream = list(client.chat.completions.create(model=NAME, messages=messages, max_tokens=10, temperature=0,
                                                 stream=True))  # fmt: skip
    assert stream[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in stream) == chat.choices[0].message.content
    assert stream[-1].choices[0].finish_reason == chat.choices[0].finish_reason


def test_sampling_seed_and_stop(client):
    kw = {"model": NAME, "prompt": "The weather", "max_tokens": 12, "temperature": 0.8, "top_p": 0.9}
    a = client.completions.create(**kw, seed=7).choices[0].text
    assert a == client.completions.create(**kw, seed=7).choices[0].text
    greedy = client.completions.create(model=NAME, prompt="The weather", max_tokens=12, temperature=0)
    text = greedy.choices[0].text
    stop = text[len(text) // 2 :][:2]
    if stop and text.find(stop) == len(text) // 2:
        cut = client.completions.create(model=NAME, prompt="The weather", max_tokens=12, temperature=0, stop=[stop])
        assert cut.choices[0].text == text[: len(text) // 2] and cut.choices[0].finish_reason == "stop"


def test_concurrent_streams(client):
    out: dict[int, str] = {}

    def one(i: int) -> None:
        stream = client.completions.create(model=NAME, prompt=f"Request {i}", max_tokens=8, temperature=0,
                                           stream=True)  # fmt: skip
        out[i] = "".join(c.choices[0].text for c in stream if c.choices)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(out) == list(range(6))
    solo = client.completions.create(model=NAME, prompt="Request 3", max_tokens=8, temperature=0).choices[0].text
    assert out[3] == solo


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"prompt": "Hi", "model": "other"}, 404, "model"),
        ({"max_tokens": 4}, 400, "prompt"),
        ({"prompt": ""}, 400, "prompt"),
        ({"prompt": []}, 400, "prompt"),
        ({"prompt": "Hi", "max_tokens": 0}, 400, "max_tokens"),
        ({"prompt": "Hi", "max_tokens": 500}, 400, "max_tokens"),
        ({"prompt": "Hi", "max_tokens": "ten"}, 400, "max_tokens"),
        ({"prompt": "Hi", "temperature": -0.5}, 400, "temperature"),
        ({"prompt": "Hi", "top_p": 0}, 400, "top_p"),
        ({"prompt": "Hi", "n": 2}, 400, "n"),
        ({"prompt": "Hi", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"prompt": "word " * 200}, 400, "prompt"),
        ({"prompt": [9999]}, 400, "prompt"),
    ],
    ids=["unknown-model", "no-prompt", "empty-prompt", "empty-list", "max-tokens-0", "max-tokens-beyond-context",
         "max-tokens-type", "negative-temperature", "top-p-0", "n-2", "five-stops", "prompt-too-long", "token-out-of-vocab"],
)  # fmt: skip
def test_bad_completion_requests_get_openai_errors(server, body, status, param):
    r = _post(server, "/v1/completions", body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and param in err["message"]


def test_other_bad_requests(server, client):
    r = _post(server, "/v1/completions", '{"prompt": "Hi",')
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = _post(server, "/v1/chat/completions", {"messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = _post(server, "/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].role"
    r = _post(server, "/v1/nothing", {})
    assert r.status_code == 404 and "error" in r.json()
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=NAME, prompt="Hi", temperature=-1)
    assert exc.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="Hi")


def test_a_dropped_stream_frees_its_slot(server):
    body = {"model": NAME, "prompt": "Go on", "max_tokens": 100, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", server["url"] + "/v1/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:  # fmt: skip
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = httpx.get(server["url"] + "/metrics", headers=AUTH).text
        if "cp_serve_active_requests 0.0" in text:
            break
        time.sleep(0.2)
    assert "cp_serve_active_requests 0.0" in text


def test_metrics(server):
    assert httpx.get(server["url"] + "/metrics").status_code == 401  # behind the key (--public-metrics opens it)
    r = httpx.get(server["url"] + "/metrics", headers=AUTH)
    assert r.status_code == 200
    text = r.text
    for name in ("cp_serve_requests_total", "cp_serve_prompt_tokens_total", "cp_serve_generation_tokens_total",
                 "cp_serve_request_latency_seconds_bucket", "cp_serve_time_to_first_token_seconds_bucket",
                 "cp_serve_tokens_per_second", "cp_serve_active_requests"):  # fmt: skip
        assert name in text, name
    assert 'cp_serve_requests_total{endpoint="/v1/completions",status="200"}' in text
    assert 'cp_serve_requests_total{endpoint="/v1/completions",status="400"}' in text
    assert 'cp_serve_requests_total{endpoint="/v1/completions",status="401"}' in text
    generated = [ln for ln in text.splitlines() if ln.startswith("cp_serve_generation_tokens_total ")]
    assert float(generated[0].split()[1]) > 0


def test_vllm_engine_is_refused_where_vllm_is_missing(tmp_path):
    proc = subprocess.run([PYTHON, "-m", "jobs.serve", "--model", str(tmp_path), "--port", str(free_port()),
                           "--state-dir", str(tmp_path / "s"), "--engine", "vllm"],
                          cwd=REPO, env=trainer_env(), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == "vllm is not installed on this node; deploy with the native engine"
    assert not (tmp_path / "s" / "endpoint.json").exists()


FAKE_VLLM = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""

SUPERVISE = """
import sys
from pathlib import Path
from jobs.serve import server, vllm
state, port, fake = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
sys.exit(vllm.supervise(
    argv=[sys.executable, fake, str(port)], url=f"http://127.0.0.1:{port}",
    on_ready=lambda: server.write_endpoint(state, host="127.0.0.1", port=port, model="m", engine="vllm"),
    on_exit=lambda: server.remove_endpoint(state)))
"""


def test_vllm_supervisor_writes_endpoint_when_healthy_and_forwards_sigterm(tmp_path):
    """The --engine vllm supervision with a stand-in child that answers /health like `vllm serve`."""
    (tmp_path / "fake.py").write_text(FAKE_VLLM)
    port = free_port()
    proc = subprocess.Popen([PYTHON, "-c", SUPERVISE, str(tmp_path / "s"), str(port), str(tmp_path / "fake.py")],
                            cwd=REPO, env=trainer_env())  # fmt: skip
    endpoint = tmp_path / "s" / "endpoint.json"
    deadline = time.monotonic() + 30
    while not endpoint.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert json.loads(endpoint.read_text())["engine"] == "vllm"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert not endpoint.exists()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)


def test_sigterm_removes_endpoint_json(server):
    """Runs last: stops the module's server."""
    proc = server["proc"]
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(30) == 0
    assert not (server["state"] / "endpoint.json").exists()
    assert "Traceback" not in server["log"].read_text()
