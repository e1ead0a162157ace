"""Programs that run on cluster nodes, started by the control plane's backends as ``python -m jobs.<program>``.

- ``jobs.common``: what every job and the control plane share: the run.json schema, exit codes, the hardware
  table (peak FLOP/s, memory per device) and the atomic file write.
- ``jobs.train``: the reference trainer (DeepSpeed) with its model, checkpoints and DeepSpeed config.
- ``jobs.data``: training data: token shards, the mixing sampler, the curriculum, tokenizer and bundled assets.
- ``jobs.engine``: the decode engine (continuous batching, sampling, the fast Llama path and its kernels).
- ``jobs.serve``: the OpenAI-compatible inference server over that engine (or over vLLM).
- ``jobs.export``: a checkpoint turned into Hugging Face dirs, NF4/int8 quantized, and its decode latency measured.
- ``jobs.launch``: the session leader that records how a job ended, and the warm DeepSpeed launcher.
- ``jobs.reporter``: the client any training script uses to send metrics and events to its run.

Nothing here imports Django or the control plane's packages; the two sides meet only at the command line, the run
directory and the ingest API (docs/run-config.md).
"""
