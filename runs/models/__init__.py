from runs.models.audit import AuditChainHead, AuditEvent
from runs.models.cluster import BackendKind, Cluster
from runs.models.data import DataMixRecipe, DataSource, RecipeEntry
from runs.models.metrics import MetricBlock, MetricSeries
from runs.models.run import Alert, AlertKind, Checkpoint, Run, RunStatus, Severity, Trainer

__all__ = [
    "Alert",
    "AlertKind",
    "AuditChainHead",
    "AuditEvent",
    "BackendKind",
    "Checkpoint",
    "Cluster",
    "DataMixRecipe",
    "DataSource",
    "MetricBlock",
    "MetricSeries",
    "RecipeEntry",
    "Run",
    "RunStatus",
    "Severity",
    "Trainer",
]
