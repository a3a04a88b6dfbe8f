"""Qwen3Config: presets, HF spellings (transformers 4.x and 5.x), derived numbers, and validation errors."""

from __future__ import annotations

import json
import re

import jax.numpy as jnp
import numpy as np
import pytest

from kinetics_jax import Qwen3Config
from conftest import hf_config_dict

# Parameter counts used by the original Kinetics cost scripts (billions), which count the embedding and the
# output projection separately even when they are tied (docs/qwen3_port.md).
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


# Wrong types in a config.json: one line naming the file and the field, never a TypeError from deep inside.
WRONG_TYPES = [
    ({"rms_norm_eps": "1e-6"}, "rms_norm_eps must be a finite number, got '1e-6' (str)"),
    ({"rope_theta": "abc"}, "rope_theta must be a finite number, got 'abc' (str)"),
    ({"rope_theta": 10**400}, "rope_theta must be a finite number, got 1000000"),          # OverflowError before
    ({"rope_theta": float("inf")}, "rope_theta must be a finite number, got inf (float)"),  # accepted before
    ({"hidden_size": 12.5}, "hidden_size must be a 32-bit integer, got 12.5 (float)"),
    ({"hidden_size": "64"}, "hidden_size must be a 32-bit integer, got '64' (str)"),
    ({"hidden_size": 64.0}, "hidden_size must be a 32-bit integer, got 64.0 (float)"),
    ({"num_hidden_layers": True}, "num_hidden_layers must be a 32-bit integer, got True (bool)"),
    ({"head_dim": 2**40}, "head_dim must be a 32-bit integer, got 1099511627776 (int)"),
    ({"tie_word_embeddings": "false"}, "tie_word_embeddings must be a boolean (true or false), got 'false' (str)"),
    ({"tie_word_embeddings": 0}, "tie_word_embeddings must be a boolean (true or false), got 0 (int)"),
    ({"attention_bias": 0}, "attention_bias must be a boolean (true or false), got 0 (int)"),
    ({"rope_parameters": [1, 2]}, "rope_parameters must be an object (or null), got [1, 2] (list)"),
    ({"rope_scaling": "default"}, "rope_scaling must be an object (or null), got 'default' (str)"),
    ({"rope_parameters": {"rope_theta": "1e6"}}, "rope_parameters.rope_theta must be a finite number, got '1e6'"),
    ({"rope_parameters": {"rope_theta": 123.0}},
     "the RoPE bases disagree: rope_theta=20000.0, rope_parameters.rope_theta=123.0"),
    ({"layer_types": "full_attention"}, "layer_types must be a list of strings, got 'full_attention' (str)"),
    ({"layer_types": 5}, "layer_types must be a list of strings, got 5 (int)"),
    ({"model_type": 3}, "model_type must be a string, got 3 (int)"),
]
WRONG_MOE_TYPES = [
    ({"mlp_only_layers": "1"}, "mlp_only_layers must be a list of 32-bit integers, got '1' (str)"),
    ({"mlp_only_layers": [1.5]}, "mlp_only_layers must be a list of 32-bit integers, got [1.5] (list)"),
    ({"norm_topk_prob": "false"}, "norm_topk_prob must be a boolean (true or false), got 'false' (str)"),
    ({"num_experts": 0}, "num_experts must be >= 1 for model_type qwen3_moe, got 0"),
    ({"num_experts": "6"}, "num_experts must be a 32-bit integer, got '6' (str)"),
]


def _write_config(tmp_path, raw) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    return str(path)


@pytest.mark.parametrize("base,change,message", [("dense_g4_sharded", *case) for case in WRONG_TYPES]
                         + [("moe_norm_topk", *case) for case in WRONG_MOE_TYPES])
def test_wrong_types_name_file_and_field(tmp_path, base, change, message):
    path = _write_config(tmp_path, hf_config_dict(base) | change)
    with pytest.raises(ValueError) as error:
        Qwen3Config.from_hf_config(path)
    assert str(error.value).startswith(f"{path}: {message}")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("content,message", [
    ("null", "a config must be a JSON object, got None (NoneType)"),
    ("[1, 2]", "a config must be a JSON object, got [1, 2] (list)"),
    ('"qwen3"', "a config must be a JSON object, got 'qwen3' (str)"),
])
def test_config_json_that_is_not_an_object(tmp_path, content, message):
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'config.json'}: {message}")):
        Qwen3Config.from_hf_config(tmp_path)


@pytest.mark.parametrize("content,message", [
    (b"{nope", "is not valid JSON: Expecting property name"),
    (b"\xff\xfe\x00{", "is not valid JSON: not UTF-8 text (invalid start byte at byte 0)"),
    (b"[" * 100_000 + b"]" * 100_000, "is not valid JSON: nested too deeply"),
])
def test_config_json_that_is_not_json(tmp_path, content, message):
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(f"config file {tmp_path / 'config.json'} {message}")):
        Qwen3Config.from_hf_config(tmp_path / "config.json")


def test_config_json_that_is_a_directory(tmp_path):
    (tmp_path / "config.json").mkdir()
    with pytest.raises(ValueError, match=re.escape(f"config file {tmp_path / 'config.json'} is a directory")):
        Qwen3Config.from_hf_config(tmp_path)  # IsADirectoryError before
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'config.json'} is a directory without a config")):
        Qwen3Config.from_hf_config(tmp_path / "config.json")
    with pytest.raises(ValueError, match="a config must be a mapping or a config.json path, got"):
        Qwen3Config.from_hf_config([("model_type", "qwen3")])


def test_constructor_checks_types_and_stores_plain_python_values():
    fields = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8)
    with pytest.raises(ValueError, match=r"^Qwen3Config: rms_norm_eps must be a finite number, got '1e-6' \(str\)$"):
        Qwen3Config(**fields, rms_norm_eps="1e-6")
    with pytest.raises(ValueError, match=r"^Qwen3Config: tie_word_embeddings must be a boolean"):
        Qwen3Config(**fields, tie_word_embeddings="false")
    config = Qwen3Config(**(fields | {"vocab_size": np.int64(64)}), rope_theta=np.float32(5e4), num_experts=4,
                         num_experts_per_tok=2, moe_intermediate_size=16, mlp_only_layers=[np.int32(1)])
    assert type(config.vocab_size) is int and type(config.rope_theta) is float
    assert config.mlp_only_layers == (1,) and type(config.mlp_only_layers[0]) is int
    assert Qwen3Config.from_hf_config(json.loads(json.dumps(config.to_hf_dict()))) == config  # JSON-able
