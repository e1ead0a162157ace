"""Data preparation: raw text to the trainer's token shards, as the guide's section 3 prescribes.

Built on datatrove (readers, writers, MinHash, local and Slurm executors) with the project's own steps for
normalisation, the language check, quality rules and classifier (five levels), toxicity, SimHash and exact
deduplication, SentencePiece BPE training and the weighted mix into `jobs.data` shards. Entry point:
`python -m jobs.data.prep` (run, count, classifiers); the contract is in docs/run-config.md.
"""
