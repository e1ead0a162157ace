"""What the watcher reads from a job's output: tracebacks behind torch.distributed's rank prefix, the Hugging Face
Trainer's printed logs, DeepSpeed's step, throughput and op-compile lines. The lines are those the libraries print
(transformers 5.24 PrinterCallback, DeepSpeed 0.19 engine/timer/op_builder, torch.distributed's "[rankN]: ")."""

from workers.logscan import hf_log_values, scan_lines, step_line_records, strip_rank

DDP_CRASH = """\
step 2 | loss 3.1
[rank1]: Traceback (most recent call last):
[rank0]: Traceback (most recent call last):
[rank0]:   File "/home/me/train.py", line 40, in <module>
[rank1]:   File "/home/me/train.py", line 38, in <module>
[rank0]:     raise RuntimeError(f"diverged at step {step}")
[rank0]: RuntimeError: diverged at step 3
[rank1]: torch.distributed.DistBackendError: [../third_party/gloo] Connection closed by peer
[2026-12-06 09:00:00,000] [ERROR] [launch.py:325:sigkill_handler] exits with return code = 1
""".splitlines()


def test_a_rank_prefixed_traceback_is_read_with_its_rank():
    found = [f for f in scan_lines(DDP_CRASH) if f.kind == "traceback"]
    assert [(f.line, f.data["rank"]) for f in found] == [
        ("RuntimeError: diverged at step 3", 0),
        ("torch.distributed.DistBackendError: [../third_party/gloo] Connection closed by peer", 1),
    ]


def test_a_plain_traceback_still_reads_without_a_rank():
    lines = ["Traceback (most recent call last):", '  File "x.py", line 1', "ValueError: bad shape (3, 4)"]
    assert [(f.line, f.data["rank"]) for f in scan_lines(lines)] == [("ValueError: bad shape (3, 4)", None)]


def test_strip_rank_takes_only_the_prefix():
    assert strip_rank("[rank12]: x [rank3]: y") == ("x [rank3]: y", 12)
    assert strip_rank("no prefix") == ("no prefix", None)


def test_hf_trainer_log_dicts_become_metrics_at_their_count():
    lines = [
        "{'loss': '4.123', 'grad_norm': '2.5', 'learning_rate': '5e-05', 'epoch': '0.25'}",
        "{'loss': 3.5, 'grad_norm': 1.25, 'learning_rate': 2.5e-05, 'epoch': 0.5}",
        "{'train_runtime': '10.5', 'train_samples_per_second': '24.38', 'train_steps_per_second': '0.762',"
        " 'train_loss': '3.8', 'epoch': '0.5'}",
    ]
    records, seen = step_line_records(lines, time_s=1.0, hf_logs_seen=4)
    assert seen == 6
    assert [(r["step"], r["values"]) for r in records] == [
        (5, {"loss": 4.123, "grad_norm": 2.5, "lr": 5e-05, "epoch": 0.25}),
        (6, {"loss": 3.5, "grad_norm": 1.25, "lr": 2.5e-05, "epoch": 0.5}),
        (6, {"train_runtime": 10.5, "samples_per_s": 24.38, "steps_per_s": 0.762, "train_loss": 3.8, "epoch": 0.5}),
    ]


def test_lines_that_only_look_like_hf_logs_are_left_alone():
    for line in ["{'loss': __import__('os')}", "{'a': [1, 2]}", "{not python}", "{'loss' 1}", "{}" * 5000]:
        assert hf_log_values(line) is None
    assert step_line_records(["{'loss': 'n/a', 'note': 'x'}"], time_s=0)[0] == []


def test_deepspeed_step_and_throughput_lines():
    lines = [
        "[2026-12-06 09:00:00,000] [INFO] [logging.py:107:log_dist] [Rank 0] step=20, skipped=0, lr=[0.00025],"
        " mom=[(0.9, 0.95)]",
        "[2026-12-06 09:00:00,000] [INFO] [timer.py:264:stop] epoch=0/micro_step=40/global_step=20,"
        " RunningAvgSamplesPerSec=61.5, CurrSamplesPerSec=63.25, MemAllocated=1.5GB, MaxMemAllocated=2.25GB",
    ]
    records, _ = step_line_records(lines, time_s=0)
    assert [(r["step"], r["values"]) for r in records] == [
        (20, {"lr": 0.00025}),
        (20, {"samples_per_s": 63.25, "mem_gb": 2.25}),
    ]


def test_deepspeed_compiling_an_op_is_seen_start_and_end():
    lines = [
        "Using /root/.cache/torch_extensions/py311_cpu as PyTorch extensions root...",
        "Emitting ninja build file /root/.cache/torch_extensions/py311_cpu/cpu_adam/build.ninja...",
        "Building extension module cpu_adam...",
        "Loading extension module cpu_adam...",
        "Time to load cpu_adam op: 152.36 seconds",
    ]
    found = [(f.data["op"], f.data["seconds"]) for f in scan_lines(lines) if f.kind == "compile"]
    assert found == [("cpu_adam", None), ("cpu_adam", None), ("cpu_adam", 152.36)]
