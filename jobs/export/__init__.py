"""What a checkpoint becomes after training: Hugging Face dirs, quantized models and their latency.

- ``hf``: a trainer checkpoint exported as a Hugging Face model dir (``python -m jobs.export.hf``).
- ``quantize``: the NF4 and int8 variants with size, time and perplexity (``python -m jobs.export.quantize``).
- ``latency``: prefill and decode latency of each variant (``python -m jobs.export.latency``).
"""
