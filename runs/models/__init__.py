from runs.models.api_token import ApiToken
from runs.models.attempt import Attempt, AttemptCause, AttemptState
from runs.models.audit import AuditChainHead, AuditEvent
from runs.models.cluster import BackendKind, Cluster
from runs.models.data import DataMixRecipe, DataSource, RecipeEntry, SourceFormat
from runs.models.data_prep import PrepRun
from runs.models.metrics import MetricBlock, MetricSeries
from runs.models.mlflow import MlflowMetric
from runs.models.run import Alert, AlertKind, Checkpoint, Run, RunStatus, Severity, Trainer
from runs.models.serving import Artifact, Deployment, DeploymentStatus, Engine, JobPhase, Variant
from runs.models.token import RunToken, TokenKind

__all__ = [
    "Alert",
    "AlertKind",
    "ApiToken",
    "Attempt",
    "AttemptCause",
    "AttemptState",
    "Artifact",
    "AuditChainHead",
    "AuditEvent",
    "BackendKind",
    "Checkpoint",
    "Cluster",
    "DataMixRecipe",
    "DataSource",
    "Deployment",
    "DeploymentStatus",
    "Engine",
    "JobPhase",
    "MetricBlock",
    "MetricSeries",
    "MlflowMetric",
    "PrepRun",
    "RecipeEntry",
    "Run",
    "RunStatus",
    "RunToken",
    "Severity",
    "SourceFormat",
    "TokenKind",
    "Trainer",
    "Variant",
]
