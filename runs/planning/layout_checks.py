"""Checks of a run config's model shape, cluster and parallel layout (TP, PP, EP, SP, ZeRO stage, offload)."""

from __future__ import annotations

from typing import Any

from runs.planning.fields import (
    ACCELERATORS,
    ARCHS,
    ATTENTIONS,
    BACKENDS,
    MISSING,
    RANGES,
    ConfigReader,
    divisors,
    listing,
    nearest,
)

# --- model -----------------------------------------------------------------------------------------------------


def check_model(r: ConfigReader) -> dict[str, Any]:
    m: dict[str, Any] = {
        "arch": r.choice("model.arch", ARCHS),
        "attention": r.choice("model.attention", ATTENTIONS),
    }
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_seq_len"):
        m[name] = r.integer(f"model.{name}")
    m["rope_theta"] = r.number("model.rope_theta")
    m["tie_embeddings"] = r.flag("model.tie_embeddings")
    if m["attention"] == "mla":
        for name in ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
            m[name] = r.integer(f"model.{name}")
        rope = m["qk_rope_head_dim"]
        if rope is not None and rope % 2:
            r.add(
                "model.qk_rope_head_dim",
                f"model.qk_rope_head_dim is {rope}, but rotary embeddings rotate pairs of "
                f"dimensions, so it must be even; use {rope + 1}.",
                {"model.qk_rope_head_dim": rope + 1},
            )
    elif m["attention"] == "mha" and m["hidden_size"] and m["num_heads"]:
        h, heads = m["hidden_size"], m["num_heads"]
        if h % heads:
            valid = [d for d in divisors(h) if d <= RANGES["model.num_heads"].hi]
            best = nearest(valid, heads)
            r.add(
                "model.num_heads",
                f"model.num_heads is {heads} but hidden_size {h:,} is not divisible by it; with multi-head attention "
                f"each head has hidden_size / num_heads dimensions, so set num_heads to a divisor such as {best} "
                f"(valid: {listing(valid)}).",
                {"model.num_heads": best},
            )
        elif (h // heads) % 2:
            r.add(
                "model.num_heads",
                f"model.num_heads {heads} makes the head size {h // heads} (hidden_size {h:,} / num_heads), which is odd, "
                "but rotary embeddings rotate pairs of dimensions; choose num_heads so that the head size is even.",
            )
    if m["arch"] == "moe":
        for name in ("moe_intermediate_size", "num_routed_experts", "num_shared_experts", "top_k", "first_k_dense"):
            m[name] = r.integer(f"model.{name}")
        m["aux_loss_coef"] = r.number("model.aux_loss_coef")
        top_k, routed = m["top_k"], m["num_routed_experts"]
        if top_k is not None and routed is not None and top_k > routed:
            r.add(
                "model.top_k",
                f"model.top_k is {top_k} but there are only {routed} routed experts; a token cannot "
                f"be sent to more experts than exist, so set top_k to at most {routed}.",
                {"model.top_k": routed},
            )
        first, layers = m["first_k_dense"], m["num_layers"]
        if first is not None and layers is not None and first >= layers:
            r.add(
                "model.first_k_dense",
                f"model.first_k_dense is {first} with {layers} layers, which leaves no MoE "
                f"layer; set it below {layers} (or choose the dense arch).",
                {"model.first_k_dense": max(0, layers - 1)},
            )
    return m


# --- cluster and parallel layout -------------------------------------------------------------------------------


def check_cluster(r: ConfigReader) -> dict[str, Any]:
    c = {
        "backend": r.choice("cluster.backend", BACKENDS),
        "nodes": r.integer("cluster.nodes"),
        "gpus_per_node": r.integer("cluster.gpus_per_node"),
        "accelerator": r.choice("cluster.accelerator", ACCELERATORS),
        "gpu_memory_gb": r.number("cluster.gpu_memory_gb"),
    }
    if isinstance(r.cfg.get("cluster"), dict) and "cpu_memory_gb_per_node" in r.cfg["cluster"]:
        r.number("cluster.cpu_memory_gb_per_node")
    gpu_type = r.raw("cluster.gpu_type")
    if gpu_type is not MISSING and (not isinstance(gpu_type, str) or not gpu_type.strip()):
        r.add(
            "cluster.gpu_type",
            f"cluster.gpu_type must name the accelerator (e.g. H100, A100, H200, CPU), not {gpu_type!r}; enter its type.",
        )
    if c["backend"] == "local" and c["nodes"] is not None and c["nodes"] != 1:
        r.add(
            "cluster.nodes",
            f"The local backend starts processes on this one machine, so cluster.nodes must be 1, "
            f"not {c['nodes']}; set it to 1 or use the slurm or hostfile backend.",
            {"cluster.nodes": 1},
        )
    nodes, per_node = c["nodes"], c["gpus_per_node"]
    c["world"] = int(nodes) * int(per_node) if nodes and per_node else None
    return c


def check_parallel(r: ConfigReader, *, model: dict[str, Any], cluster: dict[str, Any]) -> dict[str, Any]:
    p: dict[str, Any] = {name: r.integer(f"parallel.{name}") for name in ("tp", "pp", "ep", "zero_stage")}
    for name in ("sp", "offload_optimizer", "offload_param", "activation_checkpointing"):
        p[name] = r.flag(f"parallel.{name}")
    tp, pp, ep, zero = p["tp"], p["pp"], p["ep"], p["zero_stage"]
    gpn, world = cluster["gpus_per_node"], cluster["world"]
    if tp is not None:
        _check_tp(r, tp=tp, model=model, gpus_per_node=gpn)
    p["dp"] = None
    if tp is not None and pp is not None and world is not None:
        if world % (tp * pp):
            layers = model["num_layers"]
            good_pp = [q for q in divisors(world) if world % (tp * q) == 0 and (layers is None or q <= layers)]
            good_tp = [t for t in divisors(world) if world % (t * pp) == 0 and (gpn is None or t <= gpn)]
            best = nearest(good_pp, pp)
            r.add(
                "parallel.pp",
                f"parallel.tp x parallel.pp = {tp} x {pp} = {tp * pp} does not divide the cluster's {world:,} GPUs "
                f"({cluster['nodes']} nodes x {gpn}), so the data-parallel size would not be whole; "
                f"with TP {tp} set parallel.pp to one of {listing(good_pp) or 'none'}, or with PP {pp} set "
                f"parallel.tp to one of {listing(good_tp) or 'none'}.",
                {"parallel.pp": best} if best else None,
            )
        else:
            p["dp"] = world // (tp * pp)
    if pp is not None and model["num_layers"] is not None and pp > model["num_layers"]:
        r.add(
            "parallel.pp",
            f"parallel.pp is {pp} but the model has {model['num_layers']} layers; each pipeline stage "
            f"needs at least one layer, so set PP to at most {model['num_layers']}.",
            {"parallel.pp": model["num_layers"]},
        )
    if ep is not None:
        _check_ep(r, ep=ep, dp=p["dp"], model=model)
    if p["sp"] and tp is not None and tp == 1:
        r.add(
            "parallel.sp",
            "parallel.sp is on but parallel.tp is 1. Sequence parallelism here is Megatron-style: it splits the "
            "norm and dropout activations along the sequence across the tensor-parallel group, so it needs "
            "TP > 1; turn parallel.sp off or raise parallel.tp.",
            {"parallel.sp": False},
        )
    seq = r.raw("batch.seq_len")
    seq_range = RANGES["batch.seq_len"]
    # An out-of-range length has its own issue; one issue a field.
    seq_ok = isinstance(seq, int) and not isinstance(seq, bool) and seq_range.lo < seq < seq_range.hi
    if p["sp"] and tp is not None and tp > 1 and seq_ok and seq % tp:
        r.add(
            "batch.seq_len",
            f"batch.seq_len is {seq} with sequence parallelism over TP {tp}; Megatron-style sequence parallelism "
            f"splits every sequence evenly over the tensor-parallel ranks, so set batch.seq_len (and the "
            f"curriculum's lengths) to a multiple of {tp}, or turn parallel.sp off.",
            {"batch.seq_len": max(tp, seq - seq % tp)},
        )
    if zero is not None and zero == 0 and tp is not None and tp > 1 and ep is not None and ep > 1:
        r.add(
            "parallel.zero_stage",
            f"TP {tp} with EP {ep} runs with ZeRO stage 1 or 2 in the reference trainer: without ZeRO, DeepSpeed's "
            "gradient norm does not sum the experts held by other expert-parallel ranks; set parallel.zero_stage to 1.",
            {"parallel.zero_stage": 1},
        )
    if zero is not None:
        if p["offload_param"] and zero != 3:
            r.add(
                "parallel.offload_param",
                f"parallel.offload_param needs ZeRO stage 3 (only stage 3 partitions the parameters it moves to "
                f"the CPU), and the stage is {zero}; set parallel.zero_stage to 3 or turn parallel.offload_param "
                "off.",
                {"parallel.offload_param": False},
            )
        if p["offload_optimizer"] and zero == 0:
            r.add(
                "parallel.offload_optimizer",
                "parallel.offload_optimizer (ZeRO-Offload) moves ZeRO's optimizer-state partitions to the CPU, so it "
                "needs ZeRO stage 1 or higher, and the stage is 0; set parallel.zero_stage to 1 or turn "
                "parallel.offload_optimizer off.",
                {"parallel.zero_stage": 1},
            )
        if pp is not None and pp > 1 and zero >= 2:
            r.add(
                "parallel.zero_stage",
                f"DeepSpeed's pipeline engine supports ZeRO stage 0 or 1 only (ZeRO-2/3 "
                f"shard gradients or parameters that the pipeline schedule needs whole), and "
                f"PP is {pp}; set parallel.zero_stage to 1 (with offload_optimizer for "
                "ZeRO-Offload) or PP to 1.",
                {"parallel.zero_stage": 1},
            )
    return p


def _check_tp(r: ConfigReader, *, tp: int, model: dict[str, Any], gpus_per_node: int | None) -> None:
    widths = {
        "model.num_heads": model.get("num_heads"),
        "model.intermediate_size": model.get("intermediate_size"),
        "model.vocab_size": model.get("vocab_size"),
    }
    if model.get("arch") == "moe":
        widths["model.moe_intermediate_size"] = model.get("moe_intermediate_size")
    known = {k: v for k, v in widths.items() if v is not None}

    def fits(t: int) -> bool:
        return all(v % t == 0 for v in known.values()) and (gpus_per_node is None or gpus_per_node % t == 0)

    valid = [t for t in range(1, (gpus_per_node or tp) + 1) if fits(t)]
    if gpus_per_node is not None and (tp > gpus_per_node or gpus_per_node % tp):
        r.add(
            "parallel.tp",
            f"parallel.tp is {tp} but a node has {gpus_per_node} GPUs. Tensor parallelism exchanges "
            "activations at every layer, which only NVLink inside a node is fast enough for, so a TP "
            f"group must fit in (and evenly divide) one node; use TP in {listing(valid)} and "
            "scale across nodes with PP or data parallelism.",
            {"parallel.tp": nearest(valid, tp)},
        )
    for name, width in known.items():
        if width % tp:
            what = {"model.num_heads": "attention heads", "model.vocab_size": "vocabulary (embedding and lm_head)"}.get(
                name, "MLP width"
            )
            r.add(
                "parallel.tp",
                f"parallel.tp is {tp} but {name} is {width:,}; TP splits the {what} evenly across "
                f"the TP ranks, so TP must divide it; use TP in {listing(valid)}.",
                {"parallel.tp": nearest(valid, tp)},
            )


def _check_ep(r: ConfigReader, *, ep: int, dp: int | None, model: dict[str, Any]) -> None:
    if model.get("arch") == "dense":
        if ep > 1:
            r.add(
                "parallel.ep",
                f"parallel.ep is {ep} but the dense arch has no experts to spread; set EP to 1 or choose the moe arch.",
                {"parallel.ep": 1},
            )
        return
    if model.get("arch") != "moe":
        return
    routed = model.get("num_routed_experts")
    bad = []
    if dp is not None and dp % ep:
        bad.append(f"the data-parallel size {dp} (expert-parallel groups are carved out of the data-parallel ranks)")
    if routed is not None and routed % ep:
        bad.append(f"the {routed} routed experts (each EP rank holds the same number)")
    if bad:
        valid = [e for e in divisors(dp or ep) if routed is None or routed % e == 0]
        r.add(
            "parallel.ep",
            f"parallel.ep is {ep} but must divide {' and '.join(bad)}; use EP in {listing(valid)}.",
            {"parallel.ep": nearest(valid, ep)},
        )
