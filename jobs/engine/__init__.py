"""The decode engine behind ``jobs.serve`` and ``jobs.export.latency``: one model dir, many requests at once.

- ``loading``: ``load_engine(model_dir)``: the model loaded with transformers and the backend chosen for it.
- ``scheduler``: the ``Engine``: continuous batching of requests over the backend, one thread.
- ``llama``: the fast path for Llama-shaped models (static KV cache, CUDA graphs); ``hf``: any other architecture
  through transformers' own forward.
- ``linear``: the projections of the fast path for bf16, NF4 and int8 weights; ``nf4``: the Triton NF4 kernel.
- ``sampling``: the next token per row; ``text``: the tokenizer and incremental detokenization with stop strings.
"""
