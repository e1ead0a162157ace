"""cpctl: the control plane from a shell. `python -m client --help`; CP_URL and CP_TOKEN (or --url, --token).

    python -m client runs create my-run --preset tiny --set optimizer.lr=0.002 --curriculum "0:32, 3:64"
    python -m client runs launch 12
    python -m client runs wait 12
    python -m client runs list --status running

Answers are printed as JSON; a refusal prints the fields to fix and exits 1 (2 for a usage error).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import httpx

from client import ApiError, ControlPlane


def _value(raw: str) -> Any:
    """A --set value: JSON where it parses (2, 0.5, true, "x"), else the text itself."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _overrides(pairs: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        path, sep, raw = pair.partition("=")
        if not sep or not path.strip():
            raise SystemExit(f"cpctl: --set takes config.path=value, e.g. batch.micro_batch=2; got {pair!r}")
        out[path.strip()] = _value(raw)
    return out


def _weights(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        source, sep, raw = pair.partition("=")
        if not sep:
            raise SystemExit(f"cpctl: weights are source=percent, e.g. en=35; got {pair!r}")
        out[source.strip()] = _value(raw)
    return out


def _changes(args: argparse.Namespace) -> dict[str, Any]:
    changes = {
        "overrides": _overrides(args.set) or None,
        "cluster": _id_or_name(args.cluster),
        "recipe": _id_or_name(args.recipe),
        "trainer": args.trainer,
        "script_path": args.script_path,
        "curriculum": args.curriculum,
        "fit_override_reason": args.fit_override_reason,
    }
    if getattr(args, "rename", None):
        changes["name"] = args.rename
    return changes


def _id_or_name(raw: str | None) -> int | str | None:
    return int(raw) if raw is not None and raw.isdigit() else raw


def _run_changes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", metavar="PATH=VALUE", help="a config override (repeatable)")
    parser.add_argument("--cluster", help="cluster id or name")
    parser.add_argument("--recipe", help="recipe version id, or a recipe name (its latest version)")
    parser.add_argument("--trainer", choices=["reference", "own_script", "plan_only"])
    parser.add_argument("--script-path", help="own_script: absolute path of the .py file")
    parser.add_argument("--curriculum", help='sequence-length stages, e.g. "0:256, 3000:2048"')
    parser.add_argument("--fit-override-reason", help="why a run whose plan does not fit should run anyway")


Handler = Callable[[ControlPlane, argparse.Namespace], Any]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cpctl", description="The LLM control plane's REST API from a shell.")
    parser.add_argument("--url", help="the control plane, e.g. http://127.0.0.1:8000 (default: $CP_URL)")
    parser.add_argument("--token", help="your API token (default: $CP_TOKEN); make one on the API tokens page")
    top = parser.add_subparsers(dest="group", required=True)

    def command(group: argparse._SubParsersAction, name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        sub = group.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    def ids(sub: argparse.ArgumentParser, *names: str) -> argparse.ArgumentParser:
        for name in names:
            sub.add_argument(name, type=int)
        return sub

    command(top, "me", lambda cp, a: cp.me(), "who the token acts as, and the role")

    runs = top.add_parser("runs", help="runs").add_subparsers(dest="action", required=True)
    listing = command(
        runs,
        "list",
        lambda cp, a: cp.runs(**_filters(a, "status owner preset cluster parent q limit offset")),
        "list runs",
    )
    for flag in ("--status", "--owner", "--preset", "--cluster", "--q"):
        listing.add_argument(flag)
    for flag in ("--parent", "--limit", "--offset"):
        listing.add_argument(flag, type=int)
    ids(command(runs, "show", lambda cp, a: cp.run(a.run_id), "one run with its config and plan"), "run_id")
    ids(command(runs, "state", lambda cp, a: cp.state(a.run_id), "a run's status"), "run_id")
    ids(command(runs, "events", lambda cp, a: cp.events(a.run_id), "a run's audit events"), "run_id")
    plan = command(runs, "plan", lambda cp, a: cp.plan(a.preset, **_changes(a)), "validate and plan, save nothing")
    plan.add_argument("--preset", default="tiny")
    _run_changes(plan)
    create = command(runs, "create", lambda cp, a: cp.create_run(a.name, a.preset, **_changes(a)), "a draft run")
    create.add_argument("name")
    create.add_argument("--preset", default="tiny")
    _run_changes(create)
    edit = ids(command(runs, "edit", lambda cp, a: cp.edit_run(a.run_id, **_changes(a)), "edit a draft"), "run_id")
    edit.add_argument("--rename")
    _run_changes(edit)
    launch = ids(
        command(runs, "launch", lambda cp, a: cp.launch(a.run_id, a.fit_override_reason), "queue a run"), "run_id"
    )
    launch.add_argument("--fit-override-reason")
    cancel = ids(command(runs, "cancel", lambda cp, a: cp.cancel(a.run_id, a.reason), "cancel a run"), "run_id")
    cancel.add_argument("--reason")
    fork = ids(
        command(runs, "fork", lambda cp, a: cp.fork(a.run_id, a.checkpoint, **_changes(a)), "a new run from a run"),
        "run_id",
    )
    fork.add_argument("--checkpoint", type=int, help="start from this checkpoint id")
    fork.add_argument("--rename")
    _run_changes(fork)
    ids(command(runs, "compare", lambda cp, a: cp.compare(a.a, a.b), "config diff of two runs"), "a", "b")
    wait = ids(
        command(runs, "wait", lambda cp, a: cp.wait(a.run_id, timeout=a.timeout), "wait until the run ends"), "run_id"
    )
    wait.add_argument("--timeout", type=float, default=3600)
    series = ids(
        command(
            runs,
            "series",
            lambda cp, a: cp.series(a.run_id, a.keys.split(","), a.lo, a.hi, a.max_points),
            "metric series",
        ),
        "run_id",
    )
    series.add_argument("keys", help="keys separated by commas, e.g. loss,lr")
    series.add_argument("--lo", type=int)
    series.add_argument("--hi", type=int)
    series.add_argument("--max-points", type=int)
    ids(command(runs, "keys", lambda cp, a: cp.keys(a.run_id), "a run's metric keys"), "run_id")

    ckpt = top.add_parser("checkpoints", help="checkpoints").add_subparsers(dest="action", required=True)
    ids(command(ckpt, "list", lambda cp, a: cp.checkpoints(a.run_id), "a run's checkpoints"), "run_id")
    retention = ids(
        command(
            ckpt,
            "retention",
            lambda cp, a: cp.retention(a.run_id, a.keep_last, a.keep_every),
            "set retention and prune",
        ),
        "run_id",
    )
    retention.add_argument("--keep-last", type=int)
    retention.add_argument("--keep-every", type=int)
    ids(
        command(ckpt, "resume", lambda cp, a: cp.resume(a.checkpoint_id), "resume the run from a checkpoint"),
        "checkpoint_id",
    )
    quantize = ids(
        command(ckpt, "quantize", lambda cp, a: cp.quantize(a.checkpoint_id, a.methods), "export and quantize"),
        "checkpoint_id",
    )
    quantize.add_argument(
        "--method", dest="methods", action="append", choices=["nf4", "int8"], help="repeatable; none: export only"
    )

    art = top.add_parser("artifacts", help="quantized artifacts").add_subparsers(dest="action", required=True)
    alist = command(art, "list", lambda cp, a: cp.artifacts(a.run), "artifacts")
    alist.add_argument("--run", type=int)
    ids(command(art, "show", lambda cp, a: cp.artifact(a.artifact_id), "one artifact"), "artifact_id")
    ids(command(art, "latency", lambda cp, a: cp.latency(a.artifact_id), "measure latency"), "artifact_id")
    deploy = ids(
        command(art, "deploy", lambda cp, a: cp.deploy(a.artifact_id, a.variant, a.engine, a.name), "deploy a variant"),
        "artifact_id",
    )
    deploy.add_argument("--variant", default="nf4", choices=["base", "nf4", "int8"])
    deploy.add_argument("--engine", default="native", choices=["native", "vllm"])
    deploy.add_argument("--name", default="")

    dep = top.add_parser("deployments", help="inference endpoints").add_subparsers(dest="action", required=True)
    dlist = command(dep, "list", lambda cp, a: cp.deployments(**_filters(a, "status run")), "deployments")
    dlist.add_argument("--status")
    dlist.add_argument("--run", type=int)
    ids(command(dep, "show", lambda cp, a: cp.deployment(a.deployment_id), "one deployment"), "deployment_id")
    ids(command(dep, "stop", lambda cp, a: cp.stop_deployment(a.deployment_id), "stop a deployment"), "deployment_id")

    rec = top.add_parser("recipes", help="data-mix recipes").add_subparsers(dest="action", required=True)
    rlist = command(rec, "list", lambda cp, a: cp.recipes(**_filters(a, "name latest")), "recipe versions")
    rlist.add_argument("--name")
    rlist.add_argument("--latest", action="store_true", default=None)
    ids(command(rec, "show", lambda cp, a: cp.recipe(a.recipe_id), "one version"), "recipe_id")
    ids(command(rec, "versions", lambda cp, a: cp.recipe_versions(a.recipe_id), "all versions"), "recipe_id")
    rcreate = command(
        rec, "create", lambda cp, a: cp.create_recipe(a.name, _weights(a.weights), a.notes), "a new recipe"
    )
    rcreate.add_argument("name")
    rcreate.add_argument("weights", nargs="+", metavar="SOURCE=PERCENT")
    rcreate.add_argument("--notes", default="")
    rversion = ids(
        command(
            rec,
            "version",
            lambda cp, a: cp.new_recipe_version(a.recipe_id, _weights(a.weights), a.notes),
            "save a new version",
        ),
        "recipe_id",
    )
    rversion.add_argument("weights", nargs="+", metavar="SOURCE=PERCENT")
    rversion.add_argument("--notes", default="")

    command(top, "presets", lambda cp, a: cp.presets(), "run presets")
    command(top, "clusters", lambda cp, a: cp.clusters(), "clusters")
    command(top, "sources", lambda cp, a: cp.data_sources(), "data sources")
    alerts = command(top, "alerts", lambda cp, a: cp.alerts(**_filters(a, "run kind severity open limit")), "alerts")
    alerts.add_argument("--run", type=int)
    alerts.add_argument("--kind")
    alerts.add_argument("--severity")
    alerts.add_argument("--open", action="store_true", default=None)
    alerts.add_argument("--limit", type=int)
    audit = command(
        top, "audit", lambda cp, a: cp.audit(**_filters(a, "action actor run limit")), "the audit trail (admins)"
    )
    audit.add_argument("--action")
    audit.add_argument("--actor")
    audit.add_argument("--run", type=int)
    audit.add_argument("--limit", type=int)

    tok = top.add_parser("tokens", help="your API tokens").add_subparsers(dest="action", required=True)
    command(tok, "list", lambda cp, a: cp.tokens(), "your tokens")
    tcreate = command(tok, "create", lambda cp, a: cp.create_token(a.name), "make a token (printed once)")
    tcreate.add_argument("name")
    ids(command(tok, "revoke", lambda cp, a: cp.revoke_token(a.token_id), "revoke a token"), "token_id")
    return parser


def _filters(args: argparse.Namespace, names: str) -> dict[str, Any]:
    return {name: getattr(args, name) for name in names.split() if getattr(args, name, None) is not None}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with ControlPlane(args.url, args.token) as cp:
            answer = args.handler(cp, args)
    except ApiError as exc:
        print(f"cpctl: refused ({exc.status}): {exc.message}", file=sys.stderr)
        for error in exc.errors:
            print(f"  {error.get('field')}: {error.get('message')}", file=sys.stderr)
        return 1
    except (httpx.HTTPError, TimeoutError) as exc:
        print(f"cpctl: {exc}", file=sys.stderr)
        return 1
    json.dump(answer, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
