"""What the jobs and the control plane share, importable without torch or Django.

- ``run_config``: the run.json schema (field definitions, defaults) and its parser, whose errors name the field.
- ``run_rules``: run.json's value rules (choices, numeric ranges) and the field readers the schema builds on.
- ``failures``: exit codes and the failures a job reports by name.
- ``hardware``: peak TFLOP/s and memory per accelerator, for the planner's estimates and the trainer's MFU.
- ``atomic``: write a file so that readers see the old content or the new one, never a part.
- ``tmpdir``: a temporary folder short enough for the Unix sockets of multiprocessing.
"""
