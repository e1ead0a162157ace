from django.db import models

from runs.models.run import Run


class MlflowMetric(models.Model):
    """Every value an MLflow client logged, kept as MLflow keeps them: several values at one step each stay, with
    their timestamps, in the order they came. The charts read the block store (one value per step); this table
    answers the client's metric history and its latest value, so nothing the client sent is dropped."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="mlflow_metrics")
    # The MLflow run id the value was logged under: the run's own id, or a nested child run's ("<run>-<n>").
    mlflow_run_id = models.CharField(max_length=64)
    key = models.CharField(max_length=250)  # MLflow's own key, unchanged (spaces and colons included)
    value = models.FloatField()  # NaN and +-Infinity are kept as such
    timestamp = models.BigIntegerField()
    step = models.BigIntegerField()

    class Meta:
        indexes = [models.Index(fields=["run", "mlflow_run_id", "key", "step"], name="mlflow_metric_history_idx")]

    def __str__(self) -> str:
        return f"{self.mlflow_run_id} {self.key}@{self.step}={self.value}"
