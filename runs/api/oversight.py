"""Alerts, the audit trail (admins), who is calling, and personal API tokens."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from ninja import Query, Router, Schema, Status
from pydantic import Field

from runs.api.auth import require
from runs.api.errors import Refused
from runs.api.schemas import (
    MAX_ID,
    AlertOut,
    AlertPage,
    ApiTokenIssued,
    ApiTokenOut,
    AuditPage,
    ErrorOut,
    MeOut,
    PathId,
)
from runs.api.serialize import alert_out, audit_out, token_out
from runs.models import Alert, AlertKind, ApiToken, AuditEvent, Severity
from runs.services.api_tokens import TokenRefused, api_token_create, api_token_revoke
from runs.services.roles import role_of

router = Router(tags=["alerts, audit and tokens"])
REFUSED = {400: ErrorOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut}


@router.get("/me/", response=MeOut, summary="Who is calling, and their role")
def me(request):
    user = request.user
    return {
        "id": user.pk,
        "username": user.get_username(),
        "role": role_of(user),
        "permissions": sorted(p for p in user.get_all_permissions() if p.startswith("runs.")),
    }


class AlertFilters(Schema):
    run: int | None = Field(None, ge=1, le=MAX_ID)
    kind: AlertKind | None = None
    severity: Severity | None = None
    open: bool | None = Field(None, description="true: only alerts whose episode goes on; false: only resolved ones.")
    limit: int = Field(100, ge=1, le=500)
    offset: int = Field(0, ge=0, le=10**9)


@router.get("/alerts/", response=AlertPage, summary="Alerts, newest first")
def list_alerts(request, filters: Query[AlertFilters]):
    require(request, "runs.view_alert", "reading alerts")
    alerts = Alert.objects.all()
    if filters.run:
        alerts = alerts.filter(run_id=filters.run)
    if filters.kind:
        alerts = alerts.filter(kind=filters.kind)
    if filters.severity:
        alerts = alerts.filter(severity=filters.severity)
    if filters.open is not None:
        alerts = alerts.filter(resolved_at__isnull=filters.open)
    page = alerts[filters.offset : filters.offset + filters.limit]
    return {
        "count": alerts.count(),
        "limit": filters.limit,
        "offset": filters.offset,
        "items": [alert_out(a) for a in page],
    }


@router.get("/alerts/{alert_id}/", response={200: AlertOut, **REFUSED}, summary="One alert")
def get_alert(request, alert_id: PathId):
    require(request, "runs.view_alert", "reading alerts")
    return alert_out(get_object_or_404(Alert, pk=alert_id))


class AuditFilters(Schema):
    action: str | None = Field(None, max_length=64, description="Actions starting with this, e.g. run. or run.launch.")
    actor: str | None = Field(None, max_length=150)
    run: int | None = Field(None, ge=1, le=MAX_ID)
    limit: int = Field(100, ge=1, le=500)
    offset: int = Field(0, ge=0, le=10**9)


@router.get("/audit/", response={200: AuditPage, **REFUSED}, summary="The audit trail (admins)")
def list_audit(request, filters: Query[AuditFilters]):
    require(request, "runs.view_audit", "reading the audit trail")
    events = AuditEvent.objects.all()
    if filters.action:
        events = events.filter(action__startswith=filters.action)
    if filters.actor:
        events = events.filter(actor=filters.actor)
    if filters.run:
        events = events.filter(run_id=filters.run)
    page = events[filters.offset : filters.offset + filters.limit]
    return {
        "count": events.count(),
        "limit": filters.limit,
        "offset": filters.offset,
        "items": [audit_out(e) for e in page],
    }


@router.get("/tokens/", response=list[ApiTokenOut], summary="Your API tokens")
def list_tokens(request):
    return [token_out(t) for t in ApiToken.objects.filter(user=request.user)]


class TokenIn(Schema):
    name: str = Field(description="What the token is for, e.g. laptop or nightly-sweep.")


@router.post("/tokens/", response={201: ApiTokenIssued, **REFUSED}, summary="Make an API token (shown once)")
def create_token(request, payload: TokenIn):
    try:
        issued = api_token_create(user=request.user, name=payload.name)
    except TokenRefused as exc:
        raise Refused([(exc.field, str(exc))], 403 if exc.field == "user" else 400) from None
    return Status(201, {**token_out(issued.token), "secret": issued.secret})


@router.delete("/tokens/{token_id}/", response={200: ApiTokenOut, **REFUSED}, summary="Revoke one of your tokens")
def revoke_token(request, token_id: PathId):
    token = get_object_or_404(ApiToken, pk=token_id, user=request.user)
    try:
        api_token_revoke(token=token, actor=request.user)
    except TokenRefused as exc:
        raise Refused([(exc.field, str(exc))], 409) from None
    return token_out(token)
