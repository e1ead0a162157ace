"""The ingest body as an OpenAPI schema: docs/run-config.md's records and columns, in pydantic models.

The ingest server validates bodies with its own code (runs.metrics.validation), written for speed; these models
describe the same rules for the published schema, and tests/runs/api/test_ingest_schema.py holds the two to
agreement on generated bodies. Limits that span records or columns (MAX_POINTS, MAX_SERIES_PER_REQUEST, a
column's lists of one length) are in the descriptions only: JSON Schema cannot count across them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.config import JsonDict
from pydantic.json_schema import SkipJsonSchema

from runs.metrics.validation import MAX_POINTS, MAX_RECORDS, MAX_SERIES_PER_REQUEST, MAX_STEP, MAX_TIME

Step = Annotated[int, Field(ge=0, le=MAX_STEP, description="The training step, an integer from 0 to 2**53.")]
MetricKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_./-]{1,100}$")]
# Non-finite values travel as strings, since JSON has no NaN or Infinity (Python's json writes them as literals,
# which the server tolerates too).
NonFinite = Annotated[
    str,
    StringConstraints(pattern=r"^[\t\n\v\f\r ]*([nN][aA][nN]|[+-]?[iI][nN][fF]([iI][nN][iI][tT][yY])?)[\t\n\v\f\r ]*$"),
]
EventType = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow")  # `time`, `rank` and other fields are kept in the run directory's file


class MetricsRecord(_Record):
    kind: Literal["metrics"]
    step: Step
    values: dict[MetricKey, float | NonFinite] = Field(
        min_length=1,
        description='Metric key -> value, e.g. {"loss": 2.31, "lr": 0.001}.',
        json_schema_extra={"additionalProperties": False},  # pydantic leaves keys outside the pattern open
    )


class HeartbeatRecord(_Record):
    kind: Literal["heartbeat"]
    step: Step
    time: float | None = Field(None, ge=0, le=MAX_TIME, description="Unix time in seconds; absent: when it arrives.")


_CHECKPOINT_FIELDS: JsonDict = {
    "if": {"properties": {"type": {"const": "checkpoint_saved"}}, "required": ["type"]},
    "then": {
        "properties": {
            "tag": {"type": "string"},
            "path": {"type": "string"},
            "bytes": {"type": "integer", "minimum": 0},
            "metrics": {"type": "object"},
        }
    },
}


class EventRecord(_Record):
    model_config = ConfigDict(extra="allow", json_schema_extra={"allOf": [_CHECKPOINT_FIELDS]})

    kind: Literal["event"]
    step: Step
    type: EventType = Field(
        description="checkpoint_saved (with tag, path, bytes, metrics), oom, nan, started, finished or another name."
    )


class Column(BaseModel):
    model_config = ConfigDict(extra="allow")

    steps: list[Step] = Field(min_length=1, description="The key's steps, in any order.")
    values: list[float | NonFinite] = Field(min_length=1, description="One value per step, in the same order.")


class IngestBody(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        title="IngestBody",
        json_schema_extra={"anyOf": [{"required": ["records"]}, {"required": ["series"]}]},
    )

    records: (
        list[Annotated[MetricsRecord | EventRecord | HeartbeatRecord, Field(discriminator="kind")]]
        | SkipJsonSchema[None]
    ) = Field(
        None,
        max_length=MAX_RECORDS,
        description=f"At most {MAX_RECORDS} records, {MAX_POINTS} metric points (records and columns together) and "
        f"{MAX_SERIES_PER_REQUEST} distinct keys per request. The batch is stored whole or refused whole; points "
        "already stored (same key and step) are counted as duplicates, never twice.",
    )
    series: dict[MetricKey, Column] | SkipJsonSchema[None] = Field(
        None,
        description='Metric points as columns, key -> {"steps": [...], "values": [...]} (the form jobs.reporter '
        "sends): the same rules as metrics records.",
        json_schema_extra={"additionalProperties": False},  # pydantic leaves keys outside the pattern open
    )


class IngestError(BaseModel):
    index: int | None = Field(
        description="The record's index in `records`; null for a column or the body as a whole (`field` says which)."
    )
    field: str
    message: str


class IngestRefused(BaseModel):
    error: str
    errors: list[IngestError] = []


class IngestStored(BaseModel):
    ok: bool
    accepted: int = Field(description="Metric points stored.")
    duplicates: int = Field(description="Points already stored (same key and step), not stored again.")
    events: int
    heartbeats: int
    last_step: int | None
    alerts: list[Any]


class TokenRefused(BaseModel):
    error: str
