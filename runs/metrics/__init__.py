"""Metrics: ingest validation, the block store, compaction, reads and the streaming detectors.

The path of a point: `validation` checks a request body and groups its points by key (a `Batch`); `store`
stores batches (`prepare` decides per key what is new, what the detectors say and what to write; `postgres` and
`portable` write it on PostgreSQL or on SQLite; `rows` holds the named types they pass along); `compaction` later
merges small blocks and writes their rollups (`rollups`); `reads` answers charts; `detectors` are the streaming
checks ingest runs; `mlflow_records` keeps what an MLflow client logs besides metrics. `ingest` checks each
request of the ingest endpoint (runs.views.ingest) and stores the requests that arrive together in one transaction
(group commit).
"""
