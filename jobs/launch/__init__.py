"""How a job is started on a node and how its end is recorded, even when no one waits for it.

- ``wrapper``: the job's session leader: runs the command, passes signals on, writes exit.json
  (``python -m jobs.launch.wrapper RUN_DIR -- COMMAND...``).
- ``warm``: DeepSpeed's per-node launcher imported once and forked per local CPU job
  (``python -m jobs.launch.warm SOCKET``).
"""
