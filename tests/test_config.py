"""Qwen3Config: presets, HF spellings (transformers 4.x and 5.x), derived numbers, and validation errors."""

from __future__ import annotations

import json

import jax.numpy as jnp
import pytest

from kinetics_jax import Qwen3Config
from conftest import hf_config_dict

# Parameter counts used by the original Kinetics cost scripts (billions), which count the embedding and the
# output projection separately even when they are tied (QWEN3.md).
PAPER_PARAMS = {"qwen3-0.6b": 0.752, "qwen3-1.7b": 2.03, "qwen3-8b": 8.19, "qwen3-14b": 14.77, "qwen3-32b": 32.76}
KV_BYTES = {"qwen3-0.6b": 114_688, "qwen3-1.7b": 114_688, "qwen3-4b": 147_456, "qwen3-8b": 147_456,
            "qwen3-14b": 163_840, "qwen3-32b": 262_144}


@pytest.mark.parametrize("name", Qwen3Config.preset_names())
def test_presets_are_valid(name):
    config = Qwen3Config.preset(name)
    assert config.head_dim == 128 and config.vocab_size == 151_936
    assert Qwen3Config.from_hf_config(config.to_hf_dict()) == config


@pytest.mark.parametrize("name,billions", sorted(PAPER_PARAMS.items()))
def test_param_counts_match_the_paper_convention(name, billions):
    config = Qwen3Config.preset(name)
    tied_copy = config.vocab_size * config.hidden_size if config.tie_word_embeddings else 0
    assert abs((config.num_params() + tied_copy) / 1e9 - billions) / billions < 0.01


def test_moe_param_counts():
    config = Qwen3Config.preset("qwen3-30b-a3b")
    assert 30.0e9 < config.num_params() < 31.0e9          # "30.5B total"
    assert 3.2e9 < config.num_active_params() < 3.5e9     # "3.3B activated"
    big = Qwen3Config.preset("qwen3-235b-a22b")
    assert 234e9 < big.num_params() < 236e9 and 21.5e9 < big.num_active_params() < 22.5e9


@pytest.mark.parametrize("name,nbytes", sorted(KV_BYTES.items()))
def test_kv_bytes_per_token(name, nbytes):
    config = Qwen3Config.preset(name)
    assert config.kv_bytes_per_token() == nbytes
    assert config.kv_bytes_per_token(jnp.float32) == 2 * nbytes


def test_kv_cache_at_32k_tokens():
    assert Qwen3Config.preset("qwen3-0.6b").kv_bytes_per_token() * 32768 / 2**30 == pytest.approx(3.5)
    assert Qwen3Config.preset("qwen3-32b").kv_bytes_per_token() * 32768 / 2**30 == pytest.approx(8.0)


def test_rope_theta_both_spellings(tmp_path):
    v4 = hf_config_dict("dense_tied_g2") | {"rope_theta": 123.0, "rope_scaling": None, "torch_dtype": "bfloat16"}
    v5 = {k: v for k, v in v4.items() if k not in ("rope_theta", "rope_scaling", "torch_dtype")}
    v5 |= {"rope_parameters": {"rope_theta": 123.0, "rope_type": "default"}, "dtype": "bfloat16"}
    (tmp_path / "config.json").write_text(json.dumps(v5))
    assert Qwen3Config.from_hf_config(v4).rope_theta == 123.0
    assert Qwen3Config.from_hf_config(tmp_path).rope_theta == 123.0              # a directory
    assert Qwen3Config.from_hf_config(tmp_path / "config.json") == Qwen3Config.from_hf_config(v4)


def test_num_experts_both_spellings():
    base = hf_config_dict("moe_norm_topk")
    renamed = {k: v for k, v in base.items() if k != "num_experts"} | {"num_local_experts": base["num_experts"]}
    assert Qwen3Config.from_hf_config(renamed) == Qwen3Config.from_hf_config(base)


def test_layer_pattern_follows_transformers_rule():
    config = Qwen3Config.from_hf_config(hf_config_dict("moe_mixed_sharded"))  # step 2, mlp_only [3], 5 layers
    assert [config.is_moe_layer(i) for i in range(5)] == [False, True, False, False, False]
    assert [(s.start, s.count, s.moe) for s in config.layer_segments()] == [(0, 1, False), (1, 1, True),
                                                                            (2, 3, False)]
    assert len(Qwen3Config.preset("qwen3-30b-a3b").layer_segments()) == 1


@pytest.mark.parametrize("change,field", [
    ({"model_type": "llama"}, "model_type"),
    ({"vocab_size": None}, "vocab_size"),
    ({"num_attention_heads": 7}, "num_attention_heads"),
    ({"some_new_field": 1}, "some_new_field"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"hidden_size": 0}, "hidden_size"),
    ({"head_dim": 15}, "head_dim"),
])
def test_bad_configs_name_the_field(change, field):
    raw = hf_config_dict("dense_g4_sharded") | change
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(ValueError, match=field):
        Qwen3Config.from_hf_config(raw)


def test_bad_moe_configs_name_the_field():
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        Qwen3Config.from_hf_config(hf_config_dict("moe_norm_topk") | {"num_experts_per_tok": 7})
    with pytest.raises(ValueError, match="mlp_only_layers"):
        Qwen3Config.from_hf_config(hf_config_dict("moe_norm_topk") | {"mlp_only_layers": [9]})
    with pytest.raises(ValueError, match="moe_intermediate_size"):
        Qwen3Config.from_hf_config({k: v for k, v in hf_config_dict("moe_norm_topk").items()
                                    if k != "moe_intermediate_size"})


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="qwen3-7b"):
        Qwen3Config.preset("qwen3-7b")
    with pytest.raises(ValueError, match="not found"):
        Qwen3Config.from_hf_config(tmp_path / "nope.json")
