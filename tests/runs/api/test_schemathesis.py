"""schemathesis against the published OpenAPI schema on the real web server, as anonymous, viewer, operator and
admin (and with a run's token for the machine routes): no input may give a server error.

Examples per operation and phase: CP_FUZZ_EXAMPLES (default 10, to keep the suite's time). Each pass prints its
operations and cases; the whole test prints the totals.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.stack import ROOT, start_stack, stop_stack

pytestmark = pytest.mark.django_db(transaction=True)
EXAMPLES = int(os.environ.get("CP_FUZZ_EXAMPLES", "10"))


@pytest.fixture
def stack(tmp_path, seeded):
    stack = start_stack(tmp=tmp_path, worker=False)  # what the fuzzing queues is never started
    yield stack
    stop_stack(stack)
    print(stack.log_tail(200))  # shown by pytest only when the test failed


def _personal_token(user) -> str:
    from runs.models import ApiToken
    from runs.services.api_tokens import PREFIX, api_token_digest

    # Viewers may not make tokens; the row is written here so a viewer's calls can be fuzzed like the others'.
    secret = f"{PREFIX}fuzz-{user.username}-0123456789abcdef"
    ApiToken.objects.create(user=user, name="fuzz", digest=api_token_digest(secret), prefix=secret[:12])
    return secret


def _schemathesis(stack, schema: Path, report: Path, header: str | None, phases: str, *extra: str) -> dict:
    argv = [
        sys.executable, "-m", "schemathesis.cli", "run", str(schema), "--url", stack.url,
        "--checks", "not_a_server_error", "--max-examples", str(EXAMPLES), "--seed", "1",
        "--phases", phases, "--workers", "1", "--request-timeout", "30",
        "--suppress-health-check", "all", "--no-color",
        "--report", "ndjson", "--report-ndjson-path", str(report),
    ]  # fmt: skip
    if header:
        argv += ["--header", header]
    env = {**os.environ, "HYPOTHESIS_STORAGE_DIRECTORY": str(report.parent / ".hypothesis")}
    done = subprocess.run([*argv, *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    return {"returncode": done.returncode, "output": done.stdout[-6000:] + done.stderr[-3000:], "report": report}


def _counts(report: Path) -> tuple[int, int, list[str]]:
    """(operations, cases, server errors) from schemathesis's ndjson events."""
    operations, cases, errors = set(), 0, []
    for line in report.read_text().splitlines():
        event = json.loads(line)
        scenario = event.get("ScenarioFinished") or {}
        recorder = scenario.get("recorder") or {}
        if recorder.get("cases"):
            operations.add(recorder.get("label"))
            cases += len(recorder["cases"])
            for check_list in (recorder.get("checks") or {}).values():
                for check in check_list:
                    if check.get("status") == "FAILURE":
                        errors.append(f"{recorder.get('label')}: {check.get('name')}")
    return len(operations), cases, errors


def test_no_input_gives_a_server_error(stack, tmp_path, operator, viewer, admin_user_role, capsys):
    from runs.services.tokens import run_token_issue
    from tests.runs.factories import tiny_run

    run = tiny_run(owner=operator)
    run_token = run_token_issue(run=run, kind="operator").secret
    admin = _personal_token(admin_user_role)
    schema = tmp_path / "openapi.json"
    answer = httpx.get(f"{stack.url}/api/v1/openapi.json", headers={"Authorization": f"Bearer {admin}"})
    schema.write_text(answer.text)
    # The coverage phase (every boundary and type of every parameter, some thousands of cases) runs for the
    # roles whose requests reach the most code; the others get random cases only.
    everything, random_only = "examples,coverage,fuzzing", "examples,fuzzing"
    passes = {
        "anonymous": (None, random_only, ()),
        "viewer": (f"Authorization: Bearer {_personal_token(viewer)}", random_only, ()),
        "operator": (f"Authorization: Bearer {_personal_token(operator)}", everything, ()),
        "admin": (f"Authorization: Bearer {admin}", random_only, ()),
        # The machine routes with a valid run token, on the run it belongs to (other ids are refused with 401).
        "run token": (f"Authorization: Bearer {run_token}", everything, ("--include-path-regex", "^/api/v1/ingest/")),
    }
    totals = [0, 0]
    failures = []
    for name, (header, phases, extra) in passes.items():
        result = _schemathesis(stack, schema, tmp_path / f"{name.replace(' ', '-')}.ndjson", header, phases, *extra)
        operations, cases, errors = _counts(result["report"])
        totals[0] += operations
        totals[1] += cases
        with capsys.disabled():
            print(f"\nschemathesis as {name}: {operations} operations, {cases} cases, {len(errors)} server errors")
        if result["returncode"] != 0 or errors:
            failures.append(f"--- {name}\n" + "\n".join(errors[:20]) + "\n" + result["output"])
    with capsys.disabled():
        print(f"schemathesis in all: {totals[0]} operation runs, {totals[1]} cases, {EXAMPLES} examples per phase")
    assert not failures, "\n".join(failures)
