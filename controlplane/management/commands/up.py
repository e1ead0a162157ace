"""`manage.py up`: the whole control plane on one machine, with no services to install.

Starts the embedded Redis (unless REDIS_URL is set), migrates, seeds the defaults and the README's login, then runs
the ASGI web server and a Celery worker until Ctrl-C, and stops all of them cleanly. A child that crashes is
started again (controlplane.children: bounded, with back-off, logged).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import BaseCommand

from controlplane import embedded_redis
from controlplane.children import Children, GaveUp
from controlplane.processes import web_server_argv, worker_argv
from controlplane.staticfiles import collect_static
from runs.services.roles import ADMIN, OPERATOR, VIEWER
from runs.services.seed import seed_defaults

DEFAULT_USERS = [
    # (username, password, role): the README states these; change them on any shared machine.
    ("admin", "admin-pass-123", ADMIN),
    ("operator", "operator-pass-123", OPERATOR),
    ("viewer", "viewer-pass-123", VIEWER),
]


def base_url(*, host: str, port: int, environ: Mapping[str, str] | None = None) -> str:
    """What jobs and links use to reach this server: CP_BASE_URL when set, else the address `up` listens on (a
    wildcard host is reached through loopback from this machine)."""
    given = (os.environ if environ is None else environ).get("CP_BASE_URL", "")
    if given:
        return given.rstrip("/")
    reach = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, host)
    if ":" in reach and not reach.startswith("["):
        reach = f"[{reach}]"
    return f"http://{reach}:{port}"


def ensure_default_users(stdout) -> None:
    User = get_user_model()
    for username, password, role in DEFAULT_USERS:
        if User.objects.filter(username=username).exists():
            continue
        user = User.objects.create_user(username=username, password=password)
        if role == ADMIN:
            user.is_staff = True
            user.is_superuser = True
            user.save(update_fields=["is_staff", "is_superuser"])
        user.groups.add(Group.objects.get(name=role))
        stdout.write(f"created login {username} / {password} ({role})")


DEFAULT_JOB_UIDS = "200000-299999"


def job_users_env(stdout) -> dict[str, str]:
    """As root, local jobs run as their own unprivileged users (CP_JOB_UIDS, README "Who jobs run as") unless set
    otherwise; they need an interpreter those users can run, checked here before it is switched on."""
    if os.geteuid() != 0 or "CP_JOB_UIDS" in os.environ:
        return {}
    start = int(DEFAULT_JOB_UIDS.split("-")[0])
    python = settings.JOB_PYTHON or sys.executable
    try:
        usable = (
            subprocess.run(
                [python, "-c", "import deepspeed"],
                user=start + 1,
                group=start,
                extra_groups=[],
                capture_output=True,
                timeout=120,
                cwd="/",
            ).returncode
            == 0
        )
    except (OSError, subprocess.SubprocessError):
        usable = False
    if not usable:
        stdout.write(
            f"WARNING: jobs run as root: the job users (uids {DEFAULT_JOB_UIDS}) cannot run {python} (a folder above "
            "it is closed to them). Set CP_JOB_PYTHON to an interpreter they can run, or CP_JOB_UIDS=off to "
            "silence this; see the README, 'Who jobs run as'."
        )
        return {}
    stdout.write(f"local jobs run as their own users, uids {DEFAULT_JOB_UIDS} (CP_JOB_UIDS)")
    return {"CP_JOB_UIDS": DEFAULT_JOB_UIDS}


def start_demo_run():
    """A tiny-preset run on the local backend, so a newcomer watches a real DeepSpeed job within minutes.

    Skipped while an earlier demo is still in flight (the worker re-attaches to it instead)."""
    from runs.models import Cluster, DataMixRecipe, Run
    from runs.models.run import ACTIVE_STATUSES
    from runs.planning.presets import preset_config
    from runs.services.runs import run_create, run_launch

    if Run.objects.filter(name__startswith="demo-tiny", status__in=ACTIVE_STATUSES).exists():
        return None
    owner = get_user_model().objects.filter(is_superuser=True).order_by("pk").first()
    recipe = DataMixRecipe.objects.filter(name="bilingual-demo").order_by("version").first()
    if owner is None or recipe is None:  # no admin yet, or the seed data was removed
        return None
    run = run_create(
        owner=owner,
        name="demo-tiny",
        preset="tiny",
        trainer="reference",
        cluster=Cluster.objects.get(name="local-cpu"),
        recipe=recipe,
        config=preset_config("tiny"),
    )
    return run_launch(actor=owner, run=run)


class Command(BaseCommand):
    help = "Run web (ASGI) + Celery worker (+ embedded Redis on SQLite by default) until interrupted."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--no-worker", action="store_true", help="Do not start a Celery worker.")
        parser.add_argument("--no-demo", action="store_true", help="Do not start the demo run of the tiny preset.")

    def handle(self, *args, host: str, port: int, no_worker: bool, no_demo: bool, **options):
        redis_proc = None
        children = Children(lambda line: self.stderr.write(line))
        stopping = False

        def stop(signum=None, frame=None):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            if settings.EMBEDDED_REDIS:
                redis_proc = embedded_redis.start(settings.EMBEDDED_REDIS_SOCKET, workdir=str(settings.VAR_DIR))
                self.stdout.write(f"embedded Redis on {settings.EMBEDDED_REDIS_SOCKET}")
            call_command("migrate", interactive=False, verbosity=0)
            collect_static(self.stdout)
            seed_defaults()
            ensure_default_users(self.stdout)
            env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
            env["CP_BASE_URL"] = base_url(host=host, port=port)
            settings.CP_BASE_URL = env["CP_BASE_URL"]
            env.update(job_users_env(self.stdout))
            children.add("the web server", web_server_argv(host=host, port=port), env)
            if not no_worker:
                children.add("the Celery worker", worker_argv(concurrency=settings.CP_WORKER_CONCURRENCY), env)
            self.stdout.write(self.style.SUCCESS(f"control plane on http://{host}:{port}/  (Ctrl-C stops it)"))
            if not no_worker and not no_demo:
                demo = start_demo_run()
                if demo is not None:
                    self.stdout.write(
                        f"demo run #{demo.pk} ({demo.name}) launched: http://{host}:{port}/runs/{demo.pk}/"
                    )
            while not stopping:
                try:
                    children.check()
                except GaveUp as exc:
                    self.stderr.write(f"{exc}; stopping")
                    stopping = True
                if redis_proc is not None and redis_proc.poll() is not None and not stopping:
                    self.stderr.write(f"the embedded Redis exited with {redis_proc.returncode}; starting it again")
                    redis_proc = embedded_redis.start(settings.EMBEDDED_REDIS_SOCKET, workdir=str(settings.VAR_DIR))
                time.sleep(0.5)
        finally:
            children.stop()
            if redis_proc is not None:
                embedded_redis.stop(redis_proc, settings.EMBEDDED_REDIS_SOCKET)
            self.stdout.write("stopped")
