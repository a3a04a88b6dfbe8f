"""sharding.planning.memory_per_device and scripts/pod_memory.py: per-device parameter and KV-cache bytes, checked
against arithmetic done by hand."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import jax.numpy as jnp

import kinetics_jax as kj
from kinetics_jax.sharding import planning

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _memory(config, shape, **request):
    return planning.memory_per_device(config, shape, attention=kj.AttentionConfig(), dtype=jnp.bfloat16,
                                      **request)


def test_qwen3_32b_on_eight_devices_matches_hand_arithmetic():
    config = kj.Qwen3Config.preset("qwen3-32b")
    row = _memory(config, (1, 8), prompt_lengths=[1024], max_new_tokens=31744, num_samples=32)
    # Pages of 16 tokens: the null page, 64 shared prompt pages, and per sample ceil(32767 / 16) - 64 = 1984 own
    # pages (the last sampled token is never cached); the pool is rounded up to a multiple of 64.
    pages = math.ceil((1 + 64 + 32 * 1984) / 64) * 64
    per_page = 16 * 2 * 64 * 8 * 128 * 2  # bf16 K and V (dense: no block summaries)
    assert row.kv_cache == pages * per_page // 8  # 8 KV heads over 8 devices
    block = planning.memory_per_device(
        config, (1, 8), prompt_lengths=[1024], max_new_tokens=31744, num_samples=32, dtype=jnp.bfloat16,
        attention=kj.AttentionConfig(kj.policies.BlockTopK(block_topk=64)))  # sink 4: pages shifted by 12 slots
    pages = math.ceil((1 + (1024 + 12) // 16 + 32 * (math.ceil((12 + 32767) / 16) - 64)) / 64) * 64
    assert block.kv_cache == pages * (per_page + 64 * 8 * 128 * 2) // 8  # + one bf16 mean key per page and layer
    # Every matrix is split 8 ways (heads, mlp, vocab); only the RMSNorm scales are replicated.
    h, layers, vocab, hq, hkv, d, mlp = 5120, 64, 151936, 64, 8, 128, 25600
    matrices = 2 * vocab * h + layers * (h * hq * d * 2 + h * hkv * d * 2 + 3 * h * mlp)
    norms = h + layers * (2 * h + 2 * d)
    assert row.params == matrices * 2 // 8 + norms * 2


def test_kv_heads_are_copied_when_the_model_axis_exceeds_them():
    config = kj.Qwen3Config.preset("qwen3-235b-a22b")  # 4 KV heads
    request = dict(prompt_lengths=[512], max_new_tokens=4096, num_samples=8)
    four, eight = _memory(config, (4, 4), **request), _memory(config, (2, 8), **request)
    assert four.kv_replicas == 1 and eight.kv_replicas == 2
    with pytest.raises(ValueError, match="must divide the query heads"):
        _memory(config, (4, 3), **request)
    # One KV head per device in both: 4 x 4 splits the 4 heads, 2 x 8 keeps 2 copies of each over 8 devices.
    # A data shard holds the null page, the 32 prompt pages and ceil(4607 / 16) - 32 = 256 pages per sample:
    # 2 samples on 4 x 4, 4 on 2 x 8; pools rounded up to 64 pages.
    per_page = 16 * 2 * 94 * 4 * 128 * 2
    assert four.kv_cache == math.ceil((33 + 2 * 256) / 64) * 64 * per_page // 4
    assert eight.kv_cache == math.ceil((33 + 4 * 256) / 64) * 64 * per_page * 2 // 8


def test_cli_prints_the_table():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "pod_memory.py"), "--preset=qwen3-32b",
                          "--meshes=1x8,2x4", "--device_memory_gib=80"], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"), timeout=120)
    assert out.returncode == 0, out.stderr
    assert "| 1 x 8 | 8 | 7.6 | 31.1 | 38.7 | yes |" in out.stdout
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "pod_memory.py"), "--meshes=4"],
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
    assert bad.returncode != 0 and "DATAxMODEL" in bad.stderr
