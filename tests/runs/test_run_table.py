"""The runs table: search, filters, sorting, tags and notes, progress, duration, final and best metrics, archive and
delete of drafts; and the compare page for any number of runs."""

import pytest
from django.urls import reverse

from runs.metrics.store import metrics_record
from runs.models import AuditEvent, Run, RunStatus
from runs.services.runs import run_launch
from tests.runs.factories import tiny_run

pytestmark = pytest.mark.django_db


def _loss(run, values):
    metrics_record(
        run=run,
        records=[{"kind": "metrics", "step": s, "time": 0.0, "values": {"loss": v}} for s, v in enumerate(values)],
    )


def _rows(page: str) -> list[int]:
    import re

    return [int(m) for m in re.findall(r'<tr data-run="(\d+)"', page)]


@pytest.fixture
def three(seeded, operator):
    a = tiny_run(owner=operator, name="alpha-baseline")
    b = tiny_run(owner=operator, name="beta-lr-sweep")
    c = tiny_run(owner=operator, name="gamma-draft")
    _loss(a, [3.0, 2.0, 2.5])  # best 2.0, final 2.5
    _loss(b, [3.0, 1.5, 1.7])  # best 1.5, final 1.7
    return a, b, c


def test_the_table_sorts_by_final_and_best_metric_both_ways(client, viewer, three):
    a, b, c = three
    client.force_login(viewer)
    page = client.get(reverse("run-list") + "?sort=final").content.decode()
    assert _rows(page) == [b.pk, a.pk, c.pk]  # runs without the metric last
    assert _rows(client.get(reverse("run-list") + "?sort=-best").content.decode()) == [a.pk, b.pk, c.pk]
    assert "2.5000" in page and "1.5000" in page
    assert _rows(client.get(reverse("run-list") + "?sort=name").content.decode()) == [a.pk, b.pk, c.pk]
    assert _rows(client.get(reverse("run-list") + "?sort=bogus").content.decode()) == [c.pk, b.pk, a.pk]


def test_search_finds_names_tags_notes_and_ids(client, operator, three):
    a, b, c = three
    client.force_login(operator)
    client.post(reverse("run-annotate", args=[b.pk]), {"tags": "sweep, lr", "notes": "lr 3e-4 looks best"})
    b.refresh_from_db()
    assert b.tag_list == ["sweep", "lr"] and b.notes == "lr 3e-4 looks best"
    assert AuditEvent.objects.filter(action="run.annotate", object_id=str(b.pk)).exists()
    assert _rows(client.get(reverse("run-list") + "?q=looks+best").content.decode()) == [b.pk]
    assert _rows(client.get(reverse("run-list") + "?tag=sweep").content.decode()) == [b.pk]
    assert _rows(client.get(reverse("run-list") + f"?q=%23{a.pk}").content.decode()) == [a.pk]
    assert _rows(client.get(reverse("run-list") + "?q=gamma").content.decode()) == [c.pk]
    bad = client.post(reverse("run-annotate", args=[a.pk]), {"tags": "has space!"}, follow=True).content.decode()
    assert "is not allowed" in bad


def test_progress_and_duration_are_shown(client, viewer, three, operator):
    a, b, c = three
    run_launch(actor=operator, run=a)
    from django.utils import timezone

    Run.objects.filter(pk=a.pk).update(
        status=RunStatus.SUCCEEDED,
        started_at=timezone.now() - timezone.timedelta(minutes=3),
        finished_at=timezone.now(),
    )
    client.force_login(viewer)
    page = client.get(reverse("run-list")).content.decode()
    total = a.config["training"]["total_steps"]
    assert f"2/{total}" in page and "3 min 00 s" in page


def test_archive_hides_runs_and_only_drafts_are_deleted(client, operator, three):
    a, b, c = three
    client.force_login(operator)
    client.post(reverse("run-bulk"), {"action": "archive", "run": [a.pk]})
    assert _rows(client.get(reverse("run-list")).content.decode()) == [c.pk, b.pk]
    assert _rows(client.get(reverse("run-list") + "?archived=only").content.decode()) == [a.pk]
    refused = client.post(reverse("run-bulk"), {"action": "delete", "run": [b.pk]}, follow=True).content.decode()
    assert "archive it instead" in refused and Run.objects.filter(pk=b.pk).exists()  # b has metrics
    client.post(reverse("run-bulk"), {"action": "delete", "run": [c.pk]})
    assert not Run.objects.filter(pk=c.pk).exists()
    assert AuditEvent.objects.filter(action="run.delete", object_id=str(c.pk)).exists()


def test_a_viewer_cannot_archive_or_annotate(client, viewer, three):
    a, _, _ = three
    client.force_login(viewer)
    assert client.post(reverse("run-bulk"), {"action": "archive", "run": [a.pk]}).status_code == 403
    assert client.post(reverse("run-annotate", args=[a.pk]), {"tags": "x"}).status_code == 403


def test_compare_takes_any_number_of_runs_with_a_diff_and_parallel_coordinates(client, viewer, three, operator):
    a, b, c = three
    d = tiny_run(owner=operator, name="delta", optimizer__lr=0.003)
    client.force_login(viewer)
    page = client.get(reverse("run-compare") + f"?run={a.pk}&run={b.pk}&run={c.pk}&run={d.pk}").content.decode()
    assert page.count("<th>#") == 4
    assert "optimizer.lr" in page and "0.003" in page and "model.hidden_size" not in page
    assert '"label": "optimizer.lr"' in page and "parcoords" in page
