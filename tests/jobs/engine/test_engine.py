"""The decode engine against transformers: greedy tokens equal ``generate(do_sample=False)`` (CPU, fp32).

Fast path (Llama): one request, several concurrent ones of different prompt lengths, requests joining between
decode steps and reusing slots, the CUDA graphs' padded shapes run eagerly, grouped-query attention, NF4 (same
bitsandbytes kernels as transformers on CPU: equal tokens) and int8 (weight-only: logits against the dequantized
weights). Generic path: tiny DeepseekV3 (MLA + MoE). Plus sampling, stops, EOS, limits and the engine thread.
"""

from __future__ import annotations

import threading

import pytest
import torch

from jobs.engine.loading import load_engine, load_model
from jobs.engine.sampling import SamplingParams
from jobs.engine.text import Detokenizer, load_tokenizer
from tests.jobs.tiny_models import export_llama, export_tiny, hf_greedy, quantize, save_llama_gqa

GREEDY = SamplingParams(max_tokens=24, temperature=0.0)
PROMPTS = [list(range(5, 8)), list(range(100, 117)), list(range(40, 49)), list(range(300, 330))]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return export_llama(tmp_path_factory.mktemp("llama") / "base")


@pytest.fixture(scope="module")
def llama_ref(llama_dir):
    return load_model(llama_dir, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def llama_engine(llama_dir):
    return load_engine(llama_dir, max_batch=4, max_seq_len=128)


def _check_against(ref, engine, prompts, handles, n=24):
    for prompt, handle in zip(prompts, handles, strict=True):
        assert handle.token_ids == hf_greedy(ref, prompt, n, engine.eos_ids), f"prompt of {len(prompt)} tokens"


def test_fast_path_is_used_for_llama(llama_engine):
    info = llama_engine.info()
    assert info["path"] == "llama-fast" and info["weights"] == "dense" and info["dtype"] == "float32"


def test_one_request_matches_generate(llama_engine, llama_ref):
    (handle,) = llama_engine.generate([PROMPTS[1]], GREEDY)
    assert handle.finish_reason in ("length", "stop")
    _check_against(llama_ref, llama_engine, [PROMPTS[1]], [handle])


def test_concurrent_requests_of_different_lengths_match_generate(llama_engine, llama_ref):
    handles = llama_engine.generate(PROMPTS, GREEDY)
    assert llama_engine.steps > 0
    _check_against(llama_ref, llama_engine, PROMPTS, handles)


def test_batched_prefill_equals_one_prompt_at_a_time(llama_engine):
    backend = llama_engine.backend
    items = [(2, PROMPTS[1]), (0, PROMPTS[0]), (3, PROMPTS[3])]
    together = backend.prefill_many(items=items)
    cache = backend.kv_cache.clone()
    alone = torch.stack([backend.prefill(slot=slot, ids=ids) for slot, ids in items])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache, backend.kv_cache, rtol=1e-5, atol=1e-5)


def test_requests_join_between_steps_and_reuse_slots(llama_dir, llama_ref):
    """Two slots, six requests: new ones take a slot freed by a finished one while others are mid-decode."""
    engine = load_engine(llama_dir, max_batch=2, max_seq_len=128)
    prompts = [*PROMPTS, list(range(7, 20)), [9]]
    limits = [5, 24, 9, 12, 24, 3]
    params = [SamplingParams(max_tokens=n, temperature=0.0) for n in limits]
    handles = [engine.submit(prompts[0], params[0]), engine.submit(prompts[1], params[1])]
    for _ in range(3):
        engine.step()
    assert not handles[1].done and len(handles[1].token_ids) == 4
    handles += [engine.submit(p, sp) for p, sp in zip(prompts[2:], params[2:], strict=True)]
    while not all(h.done for h in handles):
        engine.step()
        assert len(engine._active) <= 2
    for prompt, handle, n in zip(prompts, handles, limits, strict=True):
        assert handle.token_ids == hf_greedy(llama_ref, prompt, n, engine.eos_ids)


def test_padded_graph_shapes_and_gqa_match_generate(tmp_path):
    """The batch and KV-length buckets the CUDA graphs use, run eagerly: padding rows and masks change nothing."""
    model_dir = save_llama_gqa(tmp_path / "gqa")
    engine = load_engine(model_dir, max_batch=8, max_seq_len=300, pad_to_buckets=True)
    assert engine.backend.group == 4 and engine.backend.kv_buckets == [256, 300]
    ref = load_model(model_dir, device=torch.device("cpu"))
    prompts = [PROMPTS[0], PROMPTS[2], list(range(1, 240))]
    handles = engine.generate(prompts, SamplingParams(max_tokens=30, temperature=0.0))
    _check_against(ref, engine, prompts, handles, n=30)


def test_nf4_fast_path_matches_transformers(llama_dir, tmp_path):
    """bf16 math: batched rows and op order round differently now and then, so each greedy choice is checked
    against transformers' logits over the same tokens (teacher forcing): it must be their argmax up to bf16 noise."""
    nf4 = quantize(llama_dir, tmp_path / "nf4", kind="nf4")
    engine = load_engine(nf4, max_batch=4, max_seq_len=128)
    assert engine.info()["weights"] == "nf4"
    ref = load_model(nf4, device=torch.device("cpu"))  # the same bitsandbytes kernels
    handles = engine.generate(PROMPTS[:3], SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True))
    for prompt, handle in zip(PROMPTS[:3], handles, strict=True):
        assert handle.token_ids[0] == hf_greedy(ref, prompt, 1, set())[0]
        with torch.no_grad():
            logits = ref(torch.tensor([prompt + handle.token_ids])).logits[0, len(prompt) - 1 : -1].float()
        chosen = logits.gather(1, torch.tensor(handle.token_ids).unsqueeze(1)).squeeze(1)
        slack = 0.02 * float(logits.abs().max())
        assert bool((chosen >= logits.max(dim=-1).values - slack).all()), f"prompt of {len(prompt)} tokens"


def test_int8_fast_path_is_weight_only_int8(llama_dir, tmp_path):
    """Logits equal the model with the stored int8 weights dequantized (row scale / 127), to bf16 precision."""
    int8 = quantize(llama_dir, tmp_path / "int8", kind="int8")
    engine = load_engine(int8, max_batch=2, max_seq_len=128)
    assert engine.info()["weights"] == "int8"
    ref = load_model(llama_dir, device=torch.device("cpu"))
    quantized = engine.backend.model
    with torch.no_grad():
        for name, module in quantized.named_modules():
            if type(module).__name__ == "Linear8bitLt":
                target = ref.get_submodule(name)
                target.weight.copy_(module.weight.data.float() * module.weight.SCB.float()[:, None] / 127.0)
        got = engine.backend.prefill(slot=0, ids=PROMPTS[1]).float()
        want = ref(torch.tensor([PROMPTS[1]])).logits[0, -1]
        # The transformers int8 model still runs on the weights the engine re-pointed.
        assert quantized(torch.tensor([PROMPTS[1]])).logits.shape[-1] == want.shape[-1]
    torch.testing.assert_close(got, want, atol=0.05 * float(want.abs().max()), rtol=0.0)


def test_generic_path_matches_generate_for_deepseek_v3(tmp_path):
    model_dir = export_tiny(tmp_path / "ds")  # moe + mla -> DeepseekV3ForCausalLM
    engine = load_engine(model_dir, max_batch=4, max_seq_len=128)
    assert engine.info()["path"] == "hf-generic"
    ref = load_model(model_dir, device=torch.device("cpu"))
    handles = engine.generate(PROMPTS[:3], SamplingParams(max_tokens=16, temperature=0.0))
    _check_against(ref, engine, PROMPTS[:3], handles, n=16)


def test_sampling_is_seeded_and_bounded(llama_engine):
    def run(seed, **kw):
        params = SamplingParams(max_tokens=12, temperature=0.9, seed=seed, ignore_eos=True, **kw)
        return llama_engine.generate([PROMPTS[2]], params)[0].token_ids

    assert run(11) == run(11)
    assert run(11) != run(12)
    (greedy,) = llama_engine.generate([PROMPTS[2]], SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True))
    assert run(5, top_k=1) == greedy.token_ids
    assert run(5, top_p=1e-6) == greedy.token_ids  # the smallest nucleus is the argmax alone


def test_stop_string_eos_and_length(llama_engine):
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    (full,) = llama_engine.generate([PROMPTS[1]], params)
    assert full.finish_reason == "length" and len(full.token_ids) == 24
    text = full.text
    cut = len(text) // 2
    stop = text[cut : cut + 3]
    assert stop and text.find(stop) == cut, "pick a stop string that first occurs mid-text"
    (stopped,) = llama_engine.generate([PROMPTS[1]], SamplingParams(max_tokens=24, temperature=0.0, stop=(stop,)))
    assert stopped.finish_reason == "stop" and stopped.text == text[:cut]
    eos = full.token_ids[4]
    first = full.token_ids.index(eos)
    saved = set(llama_engine.eos_ids)
    llama_engine.eos_ids = {eos}
    try:
        (ended,) = llama_engine.generate([PROMPTS[1]], SamplingParams(max_tokens=24, temperature=0.0))
    finally:
        llama_engine.eos_ids = saved
    assert ended.finish_reason == "stop" and ended.token_ids == full.token_ids[: first + 1]


def test_limits_are_checked(llama_engine):
    with pytest.raises(ValueError, match="prompt"):
        llama_engine.submit(list(range(128)), GREEDY)
    with pytest.raises(ValueError, match="max_tokens"):
        llama_engine.submit(list(range(100)), SamplingParams(max_tokens=29))
    with pytest.raises(ValueError, match="token ids"):
        llama_engine.submit([5000], GREEDY)


def test_engine_thread_streams_events_and_cancels(llama_dir):
    engine = load_engine(llama_dir, max_batch=2, max_seq_len=128)
    engine.start()
    try:
        events, done = [], threading.Event()

        def sink(event):
            events.append(event)
            if event.finish_reason:
                done.set()

        handle = engine.submit(PROMPTS[0], SamplingParams(max_tokens=10, temperature=0.0), sink=sink)
        assert done.wait(30)
        assert "".join(e.text for e in events) == handle.text
        assert [t for e in events for t in e.token_ids] == handle.token_ids
        assert events[-1].completion_tokens == len(handle.token_ids) and events[-1].prompt_tokens == 3
        long = engine.submit(PROMPTS[1], SamplingParams(max_tokens=100, temperature=0.0, ignore_eos=True))
        long.cancel()
        assert long.wait(30) and long.finish_reason == "cancelled" and len(long.token_ids) < 100
        assert engine.active_requests == 0 and sorted(engine._free) == [0, 1]
    finally:
        engine.stop()


def test_detokenizer_streams_whole_characters_and_holds_back_stop_prefixes():
    tok = load_tokenizer(export_dir_for_tokenizer())
    text = "Hello 日本語 world END tail"
    ids = tok.encode(text)
    detok = Detokenizer(tokenizer=tok, prompt_ids=tok.encode("Say:"), stop=("END",))
    pieces, stopped = [], False
    for i in ids:
        piece, stopped = detok.add(i)
        assert "\ufffd" not in piece
        pieces.append(piece)
        if stopped:
            break
    assert stopped and "".join(pieces) == " Hello 日本語 world "
    assert all("E" not in p for p in pieces)


def export_dir_for_tokenizer():
    from tests.jobs.tiny_models import TOKENIZER

    return TOKENIZER.parent
