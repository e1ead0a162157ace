"""Sequence-length curriculum from run.json's `curriculum` list."""


def validate_curriculum(cfg: dict) -> list[dict]:
    """The stages, checked against the contract: sorted by start_step, first at 0, lengths never decrease."""
    stages = cfg.get("curriculum") or []
    previous_start, previous_len = None, 0
    for i, stage in enumerate(stages):
        start, seq_len = stage.get("start_step"), stage.get("seq_len")
        if not isinstance(start, int) or not isinstance(seq_len, int) or start < 0 or seq_len <= 0:
            raise ValueError(f"curriculum[{i}] needs integer start_step >= 0 and seq_len > 0, got {stage!r}")
        if previous_start is None and start != 0:
            raise ValueError(f"curriculum must start at step 0, its first stage starts at {start}")
        if previous_start is not None and start <= previous_start:
            raise ValueError(f"curriculum[{i}].start_step {start} is not after the previous stage's {previous_start}")
        if seq_len < previous_len:
            raise ValueError(f"curriculum[{i}].seq_len {seq_len} is shorter than the previous stage's {previous_len}")
        previous_start, previous_len = start, seq_len
    return stages


def curriculum_seq_len(cfg: dict, step: int) -> int:
    """Sequence length at optimizer step `step`: the last stage that has started, else `batch.seq_len`."""
    stages = validate_curriculum(cfg)
    if not stages:
        return int(cfg["batch"]["seq_len"])
    current = stages[0]["seq_len"]
    for stage in stages:
        if stage["start_step"] > step:
            break
        current = stage["seq_len"]
    return current
