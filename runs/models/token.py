"""Run tokens: the bearer secrets that let a job or a script write into one run (ingest, MLflow compatibility).

Only the SHA-256 of a token is stored. The rules (which token is valid when) live in runs.services.tokens.
"""

from django.conf import settings
from django.db import models

from runs.models.run import Run


class TokenKind(models.TextChoices):
    # Issued by the launcher for one attempt; valid while that attempt is the run's live one, plus a short grace.
    JOB = "job", "Job (one attempt)"
    # Issued by an operator for a script run outside the product; valid until revoked, expired or the run ends.
    OPERATOR = "operator", "Operator (own script)"


class RunToken(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="tokens")
    kind = models.CharField(max_length=16, choices=TokenKind.choices)
    # The run's attempt number a job token belongs to; empty for operator tokens.
    attempt = models.PositiveIntegerField(null=True, blank=True)
    # The attempt itself (a job token is that attempt's job's credential); empty for operator tokens.
    job_attempt = models.ForeignKey(
        "runs.Attempt", null=True, blank=True, on_delete=models.SET_NULL, related_name="tokens"
    )
    digest = models.CharField(max_length=64, unique=True)
    # The secret's last characters, so that people can tell their tokens apart on the run page.
    hint = models.CharField(max_length=8, blank=True)
    label = models.CharField(max_length=100, blank=True)
    issued_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["run", "kind"])]

    def __str__(self) -> str:
        return f"{self.kind} token …{self.hint} of run {self.run_id}"
