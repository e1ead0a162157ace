"""The inference server of a deployment: an OpenAI-compatible HTTP API over one model dir (``python -m jobs.serve``).

- ``server``: the program: arguments, the engine or vLLM child, and the endpoint.json readiness contract.
- ``app``: the HTTP routes (FastAPI), streaming included; ``protocol``: the OpenAI request fields, each checked.
- ``metrics``: the Prometheus metrics (``cp_serve_*``).
- ``vllm``: ``--engine vllm``: ``vllm serve`` as a supervised child.
"""
