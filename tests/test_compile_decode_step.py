"""The decode step, the prefill, the whole generate program and the continuous engine's decode chunk, compiled
for a TPU and for an H100 at Qwen3-8B shapes the way kj.generate runs them (cache donated or loop-carried, the
target's own kernels and split count), on this CPU machine. The compiled HLO must hold no HBM copy of a KV pool,
a summary array or a weight (cost.hlo.materialized), and the step's temporaries must stay under 10% of its
arguments: a step costs what it reads. A check skips only when its compiler is not installed, and says so.
"""

from __future__ import annotations

import dataclasses

import jax
import pytest

import kinetics_jax as kj
from kinetics_jax.cost import compiled, hlo, targets

pytestmark = pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated:DeprecationWarning")

QWEN3_8B = kj.Qwen3Config.preset("qwen3-8b")
BLOCK = kj.AttentionConfig(kj.policies.BlockTopK(block_topk=64, block_size=16), backend="pallas")
# name -> (policy, prompts, samples per prompt); contexts of 4096 tokens, prompts of 1024 for the cascade
REQUESTS = {
    "dense": (kj.AttentionConfig(backend="pallas"), 8, 1),
    "block_topk_mean": (BLOCK, 8, 1),
    "block_topk_quest": (dataclasses.replace(BLOCK, policy=dataclasses.replace(BLOCK.policy, score="quest")), 8, 1),
    "block_topk_8x128": (dataclasses.replace(BLOCK, policy=kj.policies.BlockTopK(block_size=8, block_topk=128)), 8, 1),
    "cascade": (kj.AttentionConfig(backend="pallas"), 2, 4),
    "block_topk_shared_prompt": (BLOCK, 2, 4),
    "strided_block_topk": (dataclasses.replace(BLOCK, policy=kj.policies.StridedBlockTopK(block_topk=64)), 8, 1),
}


def _request(name: str) -> compiled.Request:
    attention, prompts, samples = REQUESTS[name]
    return compiled.Request(QWEN3_8B, attention, num_prompts=prompts, num_samples=samples, context=4096,
                            prompt_len=1024 if samples > 1 else None)


def _mesh(target: str):
    reason = targets.unavailable(target)
    if reason:
        pytest.skip(f"{target}: {reason}")
    return targets.mesh(target)


def _check(fn, args, kwargs=None) -> jax.stages.Compiled:
    compiled_fn = fn.lower(*args, **(kwargs or {})).compile()
    shapes = compiled.watched_shapes((args, kwargs))
    copies = hlo.materialized(compiled_fn.as_text(), shapes)
    assert not copies, "copies of pools, summaries or weights: " + "; ".join(map(str, copies))
    return compiled_fn


@pytest.mark.parametrize("target", ["tpu-v6e", "cuda-h100"])
@pytest.mark.parametrize("name", list(REQUESTS))
def test_decode_step_compiles_for_tpu_and_cuda_without_copies(target, name):
    request = _request(name)
    fn, args = compiled.decode_step_program(request, _mesh(target))
    memory = _check(fn, args).memory_analysis()
    assert memory.temp_size_in_bytes < 0.1 * memory.argument_size_in_bytes
    assert memory.alias_size_in_bytes > 0  # the cache is updated in place


@pytest.mark.parametrize("target", ["tpu-v5p", "cuda-h100"])
def test_prefill_compiles_for_tpu_and_cuda_without_copies(target):
    fn, args = compiled.prefill_program(_request("block_topk_shared_prompt"), _mesh(target))
    _check(fn, args)


def test_generate_program_compiles_for_tpu_without_copies_in_the_loop():
    """Prefill and the whole decode loop in one program, as kj.generate compiles it."""
    request = dataclasses.replace(_request("block_topk_shared_prompt"), context=2048)
    fn, args, kwargs = compiled.generate_program(request, _mesh("tpu-v5p"))
    _check(fn, args, kwargs)


@pytest.mark.parametrize("target", ["tpu-v6e", "cuda-h100"])
@pytest.mark.parametrize("name", ["dense", "block_topk_mean", "cascade"])
def test_continuous_decode_chunk_compiles_for_tpu_and_cuda_without_copies(target, name):
    """The continuous engine's K-step chunk over 8 slots at 4096 tokens (cascade: 2 prompts x 4 samples reading
    their prompt's pages together): the engine state donated and updated in place (the cache aliased), no pool,
    summary or weight copied, temporaries under 10% of the arguments."""
    fn, args = compiled.decode_chunk_program(_request(name), _mesh(target))
    memory = _check(fn, args).memory_analysis()
    assert memory.temp_size_in_bytes < 0.1 * memory.argument_size_in_bytes
    assert memory.alias_size_in_bytes >= compiled.argument_bytes(args[1].cache)


def test_decode_step_split_count_follows_the_compile_target_not_the_host():
    """On an H100 target the dense kernel's list is split to fill the GPU (the host here is a CPU)."""
    mesh = _mesh("cuda-h100")
    request = compiled.Request(QWEN3_8B, kj.AttentionConfig(backend="pallas"), num_prompts=1, context=4096)
    fn, args = compiled.decode_step_program(request, mesh)
    text = fn.lower(*args).as_text()
    # 1 row x 8 KV heads at 257 pages: 32 programs wanted per list, at most 257 / 8 = 32 splits
    assert "tensor<1x8x32x16x128xf32>" in text or "1x8x32x16x128xf32" in text


@pytest.mark.parametrize("kind", ["dense", "block_topk"])
def test_xla_backend_decode_step_compiles_for_cuda_without_copies(kind):
    """backend="xla" (the default) in bf16: the chunked while loop reads pages by gathers, the cache is written
    by scatters; on a GPU both stay in place, no pool is copied or converted."""
    attention = kj.AttentionConfig(backend="xla") if kind == "dense" else dataclasses.replace(BLOCK, backend="xla")
    request = compiled.Request(QWEN3_8B, attention, num_prompts=8, context=4096)
    fn, args = compiled.decode_step_program(request, _mesh("cuda-h100"))
    memory = _check(fn, args).memory_analysis()
    assert memory.temp_size_in_bytes < 0.1 * memory.argument_size_in_bytes
