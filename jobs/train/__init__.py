"""The reference trainer: DeepSeek-V3's architecture at small scale under DeepSpeed (``python -m jobs.train``).

- ``trainer``: the program: one rank's training loop, metrics, checkpoints, exit codes and the JOB_STATUS line.
- ``rendezvous``: how a rank finds the others under deepspeed, torchrun, srun or as one process.
- ``model``, ``attention``, ``moe``: the transformer (MLA or MHA attention, dense or routed-expert layers).
- ``checkpoint``: saving, resuming and retention of checkpoints, and their index.
- ``ds_config``: the DeepSpeed config generated from run.json (also ``python -m jobs.train.ds_config``).
- ``faults``: fault injection for tests (a real out-of-memory error, a NaN loss).
- ``capabilities.json``: the layouts this trainer runs (``python -m jobs.train --capabilities`` prints it).
"""
