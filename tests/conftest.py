"""Shared fixtures: tiny random Qwen3 / Qwen3-MoE checkpoints written by live transformers `save_pretrained`.

Every RMSNorm weight is randomised (around 1), so a missing or misplaced norm multiply cannot hide, and the
rope base differs from transformers' default so a wrong theta shows.
"""

from __future__ import annotations

import gc
import os
from typing import Any

# The test extra installs libtpu and the CUDA plugin so that the compile checks can build TPU and GPU programs
# (kinetics_jax/cost/targets.py). Without these settings every process that imports jax would try to start a TPU
# and a GPU runtime, and the first would hold libtpu's lock file against the scripts the tests launch. The
# variables are inherited by those scripts.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")

import jax  # noqa: E402
import pytest
import torch

# Eight CPU devices for the mesh tests (tests/test_sharding.py), the in-process form of
# --xla_force_host_platform_device_count=8 (it must precede the first backend use; unlike the XLA_FLAGS variable
# it is not inherited by the scripts the tests launch). Everything else runs on device 0 as before.
jax.config.update("jax_num_cpu_devices", 8)

# Shapes the port must get right (docs/qwen3_port.md, "Porting bugs the tests guard against"): head_dim !=
# hidden/heads everywhere, tied and untied embeddings, GQA groups 1, 2 and 4, MoE with norm_topk_prob on/off, a
# mixed dense/MoE pattern (decoder_sparse_step=2 + mlp_only_layers), and sharded saves (index file).
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "dense_tied_g2": dict(model_type="qwen3", vocab_size=160, hidden_size=64, intermediate_size=96,
                          num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                          tie_word_embeddings=True, rope_theta=50_000.0),
    "dense_untied_g1": dict(model_type="qwen3", vocab_size=160, hidden_size=48, intermediate_size=80,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, head_dim=16,
                            tie_word_embeddings=False, rope_theta=1_000_000.0),
    "dense_g4_sharded": dict(model_type="qwen3", vocab_size=160, hidden_size=64, intermediate_size=128,
                             num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, head_dim=16,
                             tie_word_embeddings=False, rope_theta=20_000.0, shard="30KB"),
    "moe_norm_topk": dict(model_type="qwen3_moe", vocab_size=160, hidden_size=48, intermediate_size=96,
                          moe_intermediate_size=32, num_experts=6, num_experts_per_tok=2, norm_topk_prob=True,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                          tie_word_embeddings=False, rope_theta=1_000_000.0),
    "moe_mixed_sharded": dict(model_type="qwen3_moe", vocab_size=160, hidden_size=48, intermediate_size=96,
                              moe_intermediate_size=24, num_experts=4, num_experts_per_tok=3, norm_topk_prob=False,
                              decoder_sparse_step=2, mlp_only_layers=[3], num_hidden_layers=5,
                              num_attention_heads=8, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
                              rope_theta=30_000.0, shard="40KB"),
}


def hf_config_dict(name: str) -> dict[str, Any]:
    """The config.json-style dict of a TINY_CONFIGS entry (what Qwen3Config.from_hf_config reads)."""
    return {k: v for k, v in TINY_CONFIGS[name].items() if k != "shard"}


def build_hf_model(spec: dict[str, Any], seed: int = 0, initializer_range: float = 0.02) -> torch.nn.Module:
    """A random transformers model for one TINY_CONFIGS entry, in float32, with randomised norm weights."""
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

    spec = {k: v for k, v in spec.items() if k not in ("model_type", "shard")}
    moe = "num_experts" in spec
    torch.manual_seed(seed)
    config = (Qwen3MoeConfig if moe else Qwen3Config)(initializer_range=initializer_range, **spec)
    model = (Qwen3MoeForCausalLM if moe else Qwen3ForCausalLM)(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    return model


def save_hf(model: torch.nn.Module, path: str, shard: str | None = None) -> str:
    model.save_pretrained(path, max_shard_size=shard or "5GB")
    return path


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory) -> dict[str, str]:
    """name -> directory of a saved tiny HF checkpoint, for every TINY_CONFIGS entry."""
    root = tmp_path_factory.mktemp("hf")
    return {name: save_hf(build_hf_model(spec), os.fspath(root / name), spec.get("shard"))
            for name, spec in TINY_CONFIGS.items()}


@pytest.fixture(scope="session")
def hf_models(hf_checkpoints) -> dict[str, torch.nn.Module]:
    """The same checkpoints reloaded by transformers, in float32 eval mode."""
    from transformers import AutoModelForCausalLM

    return {name: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
            for name, path in hf_checkpoints.items()}


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drops each test module's compiled programs when it ends. Every XLA:CPU executable holds memory mappings
    of its code, and the whole suite's programs together pass the kernel's limit of 65,530 mappings per process
    (vm.max_map_count), after which compilation fails inside XLA with a segmentation fault."""
    yield
    jax.clear_caches()
    gc.collect()
