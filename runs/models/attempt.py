"""Attempts: one run, many jobs over its life. The first launch, a resume and every automatic relaunch are attempts
of the same run; a fork is a new run. Exactly one backend job belongs to an attempt, which the launcher makes sure of
with the claim (runs.services.attempts.attempt_claim) and the idempotency key each backend records with its job."""

from __future__ import annotations

from django.db import models

from runs.models.run import Run


class AttemptCause(models.TextChoices):
    LAUNCH = "launch", "First launch"
    RESUME = "resume", "Resumed by a person"
    OOM = "oom", "Out of memory"
    INSTABILITY = "instability", "Loss spike or NaN"
    HANG = "hang", "Hang"
    JOB_LOST = "job_lost", "Job lost"
    NODE_FAILURE = "node_failure", "Node failure"


class AttemptState(models.TextChoices):
    PENDING = "pending", "Pending"  # created, no launcher holds it
    CLAIMED = "claimed", "Claimed"  # a launcher holds it until lease_until and is submitting its job
    SUBMITTED = "submitted", "Submitted"  # the backend took the job (backend_job_id set)
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


LIVE_ATTEMPT_STATES = frozenset(
    {AttemptState.PENDING, AttemptState.CLAIMED, AttemptState.SUBMITTED, AttemptState.RUNNING}
)
ENDED_ATTEMPT_STATES = frozenset({AttemptState.SUCCEEDED, AttemptState.FAILED, AttemptState.CANCELLED})


class Attempt(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="attempts")
    number = models.PositiveIntegerField()
    cause = models.CharField(max_length=16, choices=AttemptCause.choices, default=AttemptCause.LAUNCH)
    state = models.CharField(max_length=16, choices=AttemptState.choices, default=AttemptState.PENDING)
    # Passed to the backend with the job (local: job.json and the processes' environment; Slurm: the job's comment
    # and name; hostfile: the same as local on every node), so that a launcher finds the job of this attempt before
    # it submits one: a redelivered task or a launcher that died between submit and record never starts a second.
    idempotency_key = models.CharField(max_length=64, unique=True)
    backend_job_id = models.CharField(max_length=100, blank=True)
    handle = models.JSONField(default=dict, blank=True)  # the backend's record of the job (pids, hosts, ...)
    claimed_by = models.CharField(max_length=200, blank=True)  # host:pid of the launcher holding the claim
    claimed_at = models.DateTimeField(null=True, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    # The checkpoint this attempt starts from (folder and step); empty for a start from scratch.
    checkpoint_path = models.CharField(max_length=500, blank=True)
    checkpoint_step = models.BigIntegerField(null=True, blank=True)
    # What was changed against the previous attempt: {"batch.micro_batch": [4, 2], ...} (dotted config paths).
    changes = models.JSONField(default=dict, blank=True)
    # How the job ended: {"state", "exit_code", "reason", "culprit": {"rank", "node", "exit_code", "signal"}, ...}.
    exit_summary = models.JSONField(default=dict, blank=True)
    # The run's last step when this attempt ended (what a later attempt's curve replaces from its checkpoint on).
    last_step = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["run", "number"]
        constraints = [
            models.UniqueConstraint(fields=["run", "number"], name="attempt_run_number_unique"),
            # At most one attempt of a run is live at a time: the database refuses a second.
            models.UniqueConstraint(
                fields=["run"],
                condition=models.Q(state__in=["pending", "claimed", "submitted", "running"]),
                name="attempt_one_live_per_run",
            ),
        ]

    def __str__(self) -> str:
        return f"run {self.run_id} attempt {self.number}"

    @property
    def is_live(self) -> bool:
        return self.state in LIVE_ATTEMPT_STATES
