"""Personal API tokens (0008_api_token) and run tokens (0008_run_tokens) were written side by side; this joins them."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0008_api_token"),
        ("runs", "0008_run_tokens"),
    ]

    operations = []
