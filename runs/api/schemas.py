"""What the REST API answers with: one schema per object, as the pages show it. The OpenAPI schema is generated
from these (and from the request models beside each route)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from ninja import Path, Schema
from pydantic import Field

MAX_ID = 2**63 - 1  # the databases' bigint: a larger id is refused as input, never sent to a query

# A path parameter naming an object: a positive 64-bit integer.
PathId = Annotated[int, Path(ge=1, le=MAX_ID)]


def is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ID


class FieldError(Schema):
    field: str = Field(description="The input that is wrong: a body field's dotted path, a query or path parameter.")
    message: str = Field(description="What is wrong and how to fix it.")


class ErrorOut(Schema):
    error: str
    errors: list[FieldError] = []


class Page(Schema):
    count: int = Field(description="How many objects match the filters in all.")
    limit: int
    offset: int


class UserRef(Schema):
    id: int
    username: str


class ClusterOut(Schema):
    id: int
    name: str
    description: str
    backend: str
    nodes: int
    gpus_per_node: int
    accelerator: str
    gpu_type: str
    gpu_memory_gb: float
    cpu_memory_gb_per_node: float
    interconnect: str
    partition: str
    runnable: bool


class DataSourceOut(Schema):
    id: int
    name: str
    language: str
    description: str
    shards_dir: str


class RecipeOut(Schema):
    id: int
    name: str
    version: int
    notes: str
    weights: dict[str, float] = Field(description="Source name -> weight in percent (sums to 100).")
    created_by: str | None
    created_at: datetime
    in_use: bool


class RecipePage(Page):
    items: list[RecipeOut]


class PresetOut(Schema):
    name: str
    label: str
    description: str
    trainer: str
    default_cluster: str | None
    config: dict[str, Any]


class RunOut(Schema):
    id: int
    name: str
    owner: str
    preset: str
    trainer: str
    script_path: str
    status: str
    cluster: str
    cluster_id: int
    recipe: str
    recipe_id: int
    parent_id: int | None
    attempt: int
    resume_from: str
    failure_reason: str
    backend_job_id: str
    last_step: int | None
    created_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    launch_blocker: str | None = Field(description="Why this run cannot be launched here; null when it can.")


class RunDetailOut(RunOut):
    config: dict[str, Any]
    plan: dict[str, Any]


class RunPage(Page):
    items: list[RunOut]


class PlanOut(Schema):
    valid: bool
    errors: list[FieldError]
    plan: dict[str, Any] | None = Field(description="Parameters, memory per GPU, fit, time and GPU-hours to budget.")
    suggestions: dict[str, Any] = Field(description="Config path -> a value that would fix a refused layout.")
    config: dict[str, Any] | None = Field(description="The frozen config a run made from this input would get.")


class CompareOut(Schema):
    a: RunOut
    b: RunOut
    diff: dict[str, list[Any]] = Field(description="Config path -> [value in a, value in b], where they differ.")


class CheckpointOut(Schema):
    id: int
    run_id: int
    step: int
    tag: str
    path: str
    size_bytes: int
    metrics: dict[str, Any]
    created_at: datetime
    pruned_at: datetime | None


class RetentionOut(Schema):
    keep_last: int
    keep_every: int
    pruned: list[CheckpointOut]


class ArtifactOut(Schema):
    id: int
    run_id: int
    checkpoint_id: int | None
    step: int
    tag: str
    methods: list[str]
    variants: list[str]
    status: str
    progress: dict[str, Any]
    report: dict[str, Any]
    failure_reason: str
    latency_status: str
    latency: dict[str, Any]
    created_by: str
    created_at: datetime
    finished_at: datetime | None


class DeploymentOut(Schema):
    id: int
    artifact_id: int
    run_id: int
    name: str
    variant: str
    engine: str
    status: str
    url: str
    backend: str
    failure_reason: str
    created_by: str
    created_at: datetime
    started_at: datetime | None
    stopped_at: datetime | None


class AlertOut(Schema):
    id: int
    run_id: int
    kind: str
    kind_label: str
    severity: str
    step: int | None
    message: str
    evidence: Any
    attempt: int
    created_at: str | None
    resolved_at: str | None


class AlertPage(Page):
    items: list[AlertOut]


class AuditEventOut(Schema):
    id: int
    created_at: datetime
    actor: str
    action: str
    object_type: str
    object_id: str
    object_repr: str
    run_id: int | None
    message: str
    diff: dict[str, Any]
    hash: str


class AuditPage(Page):
    items: list[AuditEventOut]


class ApiTokenOut(Schema):
    id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiTokenIssued(ApiTokenOut):
    secret: str = Field(description="The token itself; shown this once, never again. Send it as Bearer.")


class MeOut(Schema):
    id: int
    username: str
    role: str | None
    permissions: list[str]
