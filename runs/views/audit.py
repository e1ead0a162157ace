from django.contrib.auth.decorators import permission_required
from django.core.paginator import Paginator
from django.shortcuts import render
from django.views.decorators.http import require_GET

from runs.models import AuditEvent
from runs.services.audit import audit_last_check


@require_GET
@permission_required("runs.view_audit", raise_exception=True)
def audit_list(request):
    events = AuditEvent.objects.all()
    action = request.GET.get("action", "")
    actor = request.GET.get("actor", "")
    if action:
        events = events.filter(action__startswith=action)
    if actor:
        events = events.filter(actor=actor)
    page = Paginator(events, 100).get_page(request.GET.get("page"))
    return render(
        request, "audit/list.html", {"page": page, "action": action, "actor": actor, "last_check": audit_last_check()}
    )
