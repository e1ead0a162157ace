"""Every URL of the URL conf, every route of the published API schema and every websocket path of the ASGI
routing, requested on the real server as anonymous, viewer, operator and admin: GET, and POST (the API's own
methods too) without and with the CSRF token, with empty and malformed bodies, on existing and missing objects.

Anonymous gets a login redirect, 401 or 403 (the login pages, static files and health check aside; the machine
routes want their run token); viewers change nothing; a POST without the CSRF token changes nothing; nothing
answers 5xx and the server logs no traceback. URLs added later are walked without touching this file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.stack import start_stack, stop_stack

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "pw-for-tests-1"
MISSING = "99999999999999999999999"  # no such object, and beyond a 64-bit id
PUBLIC = re.compile(r"^/(accounts/login/|admin/login/|static/|healthz$)")
LOGIN_REDIRECT = re.compile(r"^(https?://[^/]+)?/(accounts|admin)/login/")
MACHINE = re.compile(r"^/api/v1/ingest/")  # the run's token authenticates these, no session
LOGS_OUT = re.compile(r"^/(accounts|admin)/logout/$")
JUNK = b'{"records": [{"kind": ' + "\u00e9\x00".encode() + b"]"


@dataclass
class Seen:
    requests: int = 0
    urls: set[tuple[str, str]] = field(default_factory=set)  # (url pattern or route, role)
    problems: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.problems.append(what)


def url_conf_patterns() -> list[str]:
    """The full regex of every URL pattern, from the URL conf as Django resolves it."""
    from django.urls import URLResolver, get_resolver

    def walk(patterns, prefix: str) -> Iterator[str]:
        for pattern in patterns:
            regex = pattern.pattern.regex.pattern.removeprefix("^")
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns, prefix + regex)
            else:
                yield prefix + regex

    return list(dict.fromkeys(walk(get_resolver().url_patterns, "")))


def websocket_patterns() -> list[str]:
    """The regex of every websocket route, found in the ASGI application itself (controlplane.asgi)."""
    from channels.routing import URLRouter

    from controlplane.asgi import application

    found: list[str] = []
    seen: set[int] = set()

    def visit(node: Any, depth: int) -> None:
        if id(node) in seen or depth > 12:
            return
        seen.add(id(node))
        if isinstance(node, URLRouter):
            for route in node.routes:
                found.append(route.pattern.regex.pattern.removeprefix("^"))
            return
        for name in ("app", "application", "inner", "application_mapping"):
            child = getattr(node, name, None)
            if isinstance(child, dict):
                for value in child.values():
                    visit(value, depth + 1)
            elif child is not None:
                visit(child, depth + 1)

    visit(application, 0)
    return found


def concrete(regex: str, ids: dict[str, Any], *, missing: bool = False) -> str | None:
    """A path the regex matches, its groups filled with the walk's objects (or, with missing=True, an id no
    object has); None if no candidate fits."""
    from django.utils.regex_helper import normalize

    bare = regex.removesuffix(r"\Z").removesuffix("$")
    for fmt, params in normalize(bare):
        for attempt in range(3):
            values = {p: _candidate(p, fmt, ids, missing, attempt) for p in params}
            path = "/" + fmt % values
            if re.fullmatch(bare, path[1:]):
                return path
    return None


def _candidate(param: str, fmt: str, ids: dict[str, Any], missing: bool, attempt: int) -> str:
    if param in ("app_label",):
        return "runs"
    if param == "path":
        return "css/app.css"
    if param == "content_type_id":
        return str(ids["content_type"])
    numeric = param == "pk" or param.endswith("_id") or param in ("id",)
    if numeric and missing:
        return MISSING
    if attempt == 1:
        return "runs"
    if attempt == 2:
        return "x"
    if param == "pk":
        prefixes = (("recipes/", "recipe"), ("deployments/", "deployment"), ("account/tokens/", "token"),
                    ("data/sources/", "source"), ("data/prep/", "prep"))  # fmt: skip
        for prefix, key in prefixes:
            if fmt.startswith(prefix):
                return str(ids.get(key, ids["run"]))
        return str(ids["run"])
    key = param.removesuffix("_id")
    return str(ids.get(key, ids["run"]))


class Session:
    """One role's browser: its cookies and CSRF token, logged in again after a walked logout."""

    def __init__(self, base: str, username: str | None):
        self.base, self.username = base, username
        self.http = httpx.Client(base_url=base, follow_redirects=False, timeout=60)
        if username:
            self.login()

    def login(self) -> None:
        self.http.cookies.clear()
        self.http.get("/accounts/login/")
        answer = self.http.post(
            "/accounts/login/",
            data={"username": self.username, "password": PASSWORD, "csrfmiddlewaretoken": self.csrf},
            headers={"Referer": self.base + "/accounts/login/"},
        )
        assert answer.status_code == 302, f"{self.username} could not log in: {answer.status_code}"

    @property
    def csrf(self) -> str:
        return self.http.cookies.get("csrftoken", "")

    @property
    def cookie_header(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.http.cookies.items())

    def send(self, method: str, path: str, *, csrf: bool, body: bytes = b"", content_type: str = "") -> httpx.Response:
        headers = {"Referer": self.base + path}
        if content_type:
            headers["Content-Type"] = content_type
        if csrf and self.csrf:
            headers["X-CSRFToken"] = self.csrf
        answer = self.http.request(method, path, content=body, headers=headers)
        if self.username and LOGS_OUT.match(path) and method != "GET":
            self.login()
        return answer


def state_of_the_world() -> dict[str, Any]:
    """Every row of the project's tables (audit events as their actions, logins aside), to compare before/after."""
    from django.apps import apps
    from django.contrib.auth.models import Group

    from runs.models import AuditChainHead, AuditEvent

    world: dict[str, Any] = {}
    for model in apps.get_app_config("runs").get_models():
        if model is AuditChainHead:
            continue  # moves with every appended event, logins included
        if model is AuditEvent:
            world["audit"] = sorted(
                AuditEvent.objects.exclude(action__startswith="auth.").values_list("action", "object_id")
            )
        else:
            world[model.__name__] = list(model.objects.order_by("pk").values())
    world["groups"] = list(Group.objects.order_by("pk").values("pk", "name"))
    return world


def walk_role(session: Session, role: str, urls: list[str], api_ops: list[tuple[str, str]], ids, seen: Seen) -> None:
    anonymous = session.username is None

    def record(method: str, path: str, answer: httpx.Response, what: str) -> None:
        seen.requests += 1
        label = f"{role} {method} {path} ({what}) -> {answer.status_code}"
        seen.check(answer.status_code < 500, f"server error: {label}")
        if anonymous and MACHINE.match(path):
            seen.check(not answer.is_success, f"a machine route answered without its token: {label}")
        elif anonymous and not PUBLIC.match(path):
            refused = answer.status_code in (401, 403, 404, 405) or (
                answer.is_redirect and LOGIN_REDIRECT.match(answer.headers.get("location", ""))
            )
            seen.check(refused, f"anonymous got through: {label}")
        if not anonymous and not what.startswith("csrf") and method != "GET" and not MACHINE.match(path):
            # Without the CSRF token, a logged-in browser's write is refused before any view runs.
            ok = answer.status_code in (403, 404, 405) or (
                answer.is_redirect and LOGIN_REDIRECT.match(answer.headers.get("location", ""))
            )
            seen.check(ok, f"a write without the CSRF token was not refused: {label}")

    for regex in urls:
        for missing in (False, True):
            path = concrete(regex, ids, missing=missing)
            if path is None:
                seen.problems.append(f"no concrete path for {regex}")
                continue
            seen.urls.add((regex, role))
            tag = "missing" if missing else "existing"
            record("GET", path, session.send("GET", path, csrf=False), tag)
            if LOGS_OUT.match(path):
                continue  # logging out is walked once, below, so the session is not lost half way
            record("POST", path, session.send("POST", path, csrf=False), f"no csrf, {tag}")
            record("POST", path, session.send("POST", path, csrf=True), f"csrf, empty, {tag}")
            record(
                "POST",
                path,
                session.send("POST", path, csrf=True, body=JUNK, content_type="application/json"),
                f"csrf, junk JSON, {tag}",
            )
    for method, route in api_ops:
        for missing in (False, True):
            path = concrete(_route_regex(route), ids, missing=missing)
            assert path is not None, route
            seen.urls.add((f"{method} {route}", role))
            for csrf, body, kind in (
                (False, b"", ""),
                (True, JUNK, "application/json"),
                (True, b"{}", "application/json"),
            ):
                answer = session.send(method.upper(), path, csrf=csrf, body=body, content_type=kind)
                record(method.upper(), path, answer, f"{'csrf' if csrf else 'no csrf'} api {body[:6]!r}")
    for logout in ("/accounts/logout/", "/admin/logout/"):
        record("POST", logout, session.send("POST", logout, csrf=True), "csrf, logout")


def server_errors(log: str) -> list[str]:
    """Each error the server logged (Django's "Internal Server Error", uvicorn's "Exception in ASGI application"
    for an HTTP or websocket handler that raised), with the project frames and exception of its traceback.
    Refusals that Django logs with a traceback (a 403's PermissionDenied) are warnings, not errors."""
    found, lines = [], log.splitlines()
    for i, line in enumerate(lines):
        if " ERROR " not in line and not line.startswith("ERROR:"):
            continue
        frames, exception = [], ""
        for following in lines[i + 1 : i + 200]:
            if following.startswith(" ") or following.startswith("Traceback") or not following.strip():
                if following.strip().startswith("File ") and "/site-packages/" not in following:
                    frames.append(following.strip())
                continue
            if following.startswith(("The above exception", "During handling")):
                continue
            if not following.split(":")[0].endswith(("Error", "Exception", "Denied", "Exit", "Interrupt")):
                break
            exception = following  # the last of a chain is the one raised
        found.append(" | ".join([line.strip(), *frames[-3:], exception]))
    return found


def _route_regex(route: str) -> str:
    """An OpenAPI path as a regex: {name} becomes a named group."""
    return re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(route.lstrip("/"))) + r"\Z"


def walk_websockets(session: Session, role: str, patterns: list[str], ids, seen: Seen) -> None:
    ws_base = session.base.replace("http://", "ws://")
    frames = ["", "{", "null", '{"type": "prompt", "prompt": 5}', json.dumps({"type": "x" * 5000}), "\u00e9\x00"]
    for regex in patterns:
        for missing in (False, True):
            path = concrete(regex, ids, missing=missing)
            assert path is not None, regex
            seen.urls.add((f"ws {regex}", role))
            seen.requests += 1
            headers = {"Origin": session.base}
            if session.username:
                headers["Cookie"] = session.cookie_header
            try:
                with connect(ws_base + path, additional_headers=headers, open_timeout=10, close_timeout=2) as ws:
                    accepted = True
                    for frame in [*frames, b"\x00\xff binary"]:
                        ws.send(frame)
                    try:
                        while True:
                            ws.recv(timeout=0.3)
                    except TimeoutError:
                        pass
            except InvalidStatus as exc:
                accepted = False
                status = exc.response.status_code
                seen.check(status < 500, f"websocket handshake {status}: {role} {path}")
            except ConnectionClosed as exc:
                accepted = True
                code = exc.rcvd.code if exc.rcvd else None
                seen.check(code != 1011, f"websocket closed with a server error: {role} {path}")
            if session.username is None:
                seen.check(not accepted, f"anonymous websocket accepted: {path}")


@pytest.fixture
def world(seeded, operator, viewer, django_user_model, tmp_path, settings):
    """One of each object the URLs name, made through the services where the project makes them."""
    from django.contrib.auth.models import Group
    from django.contrib.contenttypes.models import ContentType

    from runs.models import Alert, Checkpoint, Cluster, DataMixRecipe, DataSource, Run, RunStatus
    from runs.services.alerts import alert_raise
    from runs.services.api_tokens import api_token_create
    from tests.runs.factories import deployment_for, tiny_run

    admin = django_user_model.objects.create_user(username="ada", password=PASSWORD, is_staff=True, is_superuser=True)
    admin.groups.add(Group.objects.get(name="admin"))
    run = tiny_run(owner=operator)
    served = tiny_run(owner=operator, name="served")
    folder = tmp_path / "runs" / f"run-{served.pk}" / "checkpoints" / "step_000004"
    folder.mkdir(parents=True)
    Run.objects.filter(pk=served.pk).update(run_dir=str(folder.parent.parent), status=RunStatus.SUCCEEDED)
    checkpoint = Checkpoint.objects.create(run=served, step=4, tag=folder.name, path=str(folder), metrics={})
    deployment = deployment_for(Run.objects.get(pk=served.pk), actor=operator)
    alert = alert_raise(run=run, kind="loss_spike", severity="warning", step=3, message="spike")
    assert isinstance(alert, Alert)
    return {
        "run": run.pk,
        "checkpoint": checkpoint.pk,
        "artifact": deployment.artifact_id,
        "deployment": deployment.pk,
        "recipe": DataMixRecipe.objects.first().pk,
        "cluster": Cluster.objects.first().pk,
        "source": DataSource.objects.first().pk,
        "alert": alert.pk,
        "token": api_token_create(user=operator, name="walk").token.pk,
        "content_type": ContentType.objects.get_for_model(Run).pk,
    }


@pytest.fixture
def stack(tmp_path, world):
    stack = start_stack(tmp=tmp_path, worker=False)  # what the walk queues is never started
    yield stack
    stop_stack(stack)
    print(stack.log_tail(300))  # shown by pytest only when the test failed


def test_every_url_api_route_and_websocket_as_every_role(stack, world, capsys):
    urls = url_conf_patterns()
    sessions = {
        "anonymous": Session(stack.url, None),
        "viewer": Session(stack.url, "vera"),
        "operator": Session(stack.url, "otto"),
        "admin": Session(stack.url, "ada"),
    }
    schema = sessions["viewer"].http.get("/api/v1/openapi.json").json()
    api_ops = [
        (m, p) for p, item in schema["paths"].items() for m in item if m in ("get", "post", "patch", "put", "delete")
    ]
    websockets = websocket_patterns()
    seen = Seen()
    before = state_of_the_world()
    for role in ("anonymous", "viewer"):
        walk_role(sessions[role], role, urls, api_ops, world, seen)
        walk_websockets(sessions[role], role, websockets, world, seen)
    after = state_of_the_world()
    changed = [name for name in before if before[name] != after[name]]
    seen.check(not changed, f"anonymous or viewer requests changed {changed}")
    for role in ("operator", "admin"):
        walk_role(sessions[role], role, urls, api_ops, world, seen)
        walk_websockets(sessions[role], role, websockets, world, seen)
    errors = server_errors("\n".join(p.read_text(errors="replace") for p in stack.logs.glob("*.log")))
    seen.check(not errors, "the server logged errors:\n" + "\n".join(errors[:10]))
    with capsys.disabled():
        print(
            f"\nwalk: {len(urls)} URL patterns, {len(api_ops)} API operations, {len(websockets)} websocket paths "
            f"x 4 roles = {len(seen.urls)} URL x role pairs, {seen.requests} requests, {len(seen.problems)} problems"
        )
    assert not seen.problems, "\n".join(seen.problems[:60])
