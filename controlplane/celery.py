"""The Celery app; tasks live in workers/ and are found by autodiscovery."""

import os

from celery import Celery
from kombu.transport import TRANSPORT_ALIASES

# redis:// and redis+socket:// broker URLs use kombu's Redis transport with the outage fix (controlplane.broker).
TRANSPORT_ALIASES["redis"] = "controlplane.broker:Transport"

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

app = Celery("controlplane")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["workers"])
