"""Personal API tokens: a person's scripts act as that person, with that person's role."""

from django.conf import settings
from django.db import models


class ApiToken(models.Model):
    """The database keeps the token's SHA-256 only; the secret is shown once, when it is made."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=64)
    digest = models.CharField(max_length=64, unique=True)
    # The first characters of the secret, so a person can tell their tokens apart without the secret.
    prefix = models.CharField(max_length=12)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"token {self.name} ({self.prefix}...) of {self.user_id}"

    @property
    def active(self) -> bool:
        return self.revoked_at is None
