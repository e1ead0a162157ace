"""Programs that run on cluster nodes: the reference trainer (jobs.train), its data, reporter and export.

Nothing here imports Django or the control plane's packages; the two sides meet only at the run directory and the
ingest API (docs/run-config.md).
"""
