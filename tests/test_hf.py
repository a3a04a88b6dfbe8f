"""Hugging Face checkpoint reading: both expert spellings, tied copies, and every malformed-input error."""

from __future__ import annotations

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from safetensors.torch import save_file as save_torch

import kinetics_jax as kj
from kinetics_jax.checkpoint import CheckpointError, HFCheckpoint


def _copy(src: str, dst) -> str:
    shutil.copytree(src, dst)
    return os.fspath(dst)


def _logits(model, seed=0):
    ids = np.random.default_rng(seed).integers(0, model.config.vocab_size, (2, 35))
    return np.asarray(model(jnp.asarray(ids, jnp.int32)))


def test_fused_expert_spelling_loads_identically(hf_checkpoints, hf_models, tmp_path):
    """transformers 5 keeps experts fused in memory (gate_up_proj [E, 2m, h], down_proj [E, h, m])."""
    name = "moe_mixed_sharded"
    state = {k: v.contiguous() for k, v in hf_models[name].state_dict().items()}
    assert any(k.endswith("mlp.experts.gate_up_proj") for k in state)
    if hf_models[name].config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    fused_dir = tmp_path / "fused"
    fused_dir.mkdir()
    shutil.copy(os.path.join(hf_checkpoints[name], "config.json"), fused_dir)
    save_torch(state, os.fspath(fused_dir / "model.safetensors"))
    fused = kj.load_hf_checkpoint(fused_dir, dtype=jnp.float32)
    per_expert = kj.load_hf_checkpoint(hf_checkpoints[name], dtype=jnp.float32)
    np.testing.assert_array_equal(_logits(fused), _logits(per_expert))


def test_param_dtype_and_compute_dtype(hf_checkpoints):
    model = kj.load_hf_checkpoint(hf_checkpoints["dense_tied_g2"], dtype=jnp.float32, param_dtype=jnp.bfloat16)
    assert model.embed_tokens.embedding[...].dtype == jnp.bfloat16
    assert model.blocks[0].layer.self_attn.q_proj[...].dtype == jnp.bfloat16
    assert _logits(model).dtype == np.float32


def test_tied_checkpoint_with_equal_lm_head_copy_is_accepted(hf_checkpoints, tmp_path):
    path = _copy(hf_checkpoints["dense_tied_g2"], tmp_path / "ckpt")
    tensors = load_file(os.path.join(path, "model.safetensors"))
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
    save_file(tensors, os.path.join(path, "model.safetensors"))
    kj.load_hf_checkpoint(path, dtype=jnp.float32)
    tensors["lm_head.weight"] = tensors["lm_head.weight"] + 1
    save_file(tensors, os.path.join(path, "model.safetensors"))
    with pytest.raises(CheckpointError, match="lm_head.weight"):
        kj.load_hf_checkpoint(path, dtype=jnp.float32)


def _edit_tensors(path: str, edit) -> None:
    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file)


BAD = "dense_tied_g2"  # a single-file checkpoint


def test_missing_tensor(hf_checkpoints, tmp_path):
    path = _copy(hf_checkpoints[BAD], tmp_path / "ckpt")
    _edit_tensors(path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing .*model\.layers\.1\.mlp\.up_proj\.weight"):
        HFCheckpoint(path)


def test_unexpected_tensor(hf_checkpoints, tmp_path):
    path = _copy(hf_checkpoints[BAD], tmp_path / "ckpt")
    _edit_tensors(path, lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": np.zeros(96, np.float32)}))
    with pytest.raises(CheckpointError, match=r"unexpected .*q_proj\.bias"):
        HFCheckpoint(path)


def test_shape_mismatch(hf_checkpoints, tmp_path):
    path = _copy(hf_checkpoints[BAD], tmp_path / "ckpt")
    _edit_tensors(path, lambda t: t.update({"model.norm.weight": np.ones(65, np.float32)}))
    with pytest.raises(CheckpointError, match=r"model\.norm\.weight.*\(65,\)"):
        HFCheckpoint(path)


def test_config_that_disagrees_with_weights(hf_checkpoints, tmp_path):
    path = _copy(hf_checkpoints[BAD], tmp_path / "ckpt")
    config = json.load(open(os.path.join(path, "config.json")))
    config["intermediate_size"] = 100
    json.dump(config, open(os.path.join(path, "config.json"), "w"))
    with pytest.raises(CheckpointError, match=r"mlp\.\w+_proj\.weight.*config disagrees"):
        HFCheckpoint(path)


def test_truncated_file(hf_checkpoints, tmp_path):
    path = _copy(hf_checkpoints[BAD], tmp_path / "ckpt")
    file = os.path.join(path, "model.safetensors")
    os.truncate(file, os.path.getsize(file) - 100)
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated"):
        HFCheckpoint(path)


def test_corrupt_header(hf_checkpoints, tmp_path):
    path = _copy(hf_checkpoints[BAD], tmp_path / "ckpt")
    file = os.path.join(path, "model.safetensors")
    with open(file, "r+b") as f:
        f.seek(8)
        f.write(b"\x00garbage{{{")
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*corrupt"):
        HFCheckpoint(path)


def test_missing_index_shard(hf_checkpoints, tmp_path):
    path = _copy(hf_checkpoints["dense_g4_sharded"], tmp_path / "ckpt")
    shards = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    assert len(shards) > 1
    os.remove(os.path.join(path, shards[1]))
    with pytest.raises(CheckpointError, match=shards[1]):
        HFCheckpoint(path)


def test_missing_directory_and_weights(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        HFCheckpoint(tmp_path / "nothing")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3", "vocab_size": 8, "hidden_size": 8,
                                                      "intermediate_size": 8, "num_hidden_layers": 1,
                                                      "num_attention_heads": 1}))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        HFCheckpoint(tmp_path)


def test_integer_tensor_is_refused(hf_checkpoints, tmp_path):
    path = _copy(hf_checkpoints[BAD], tmp_path / "ckpt")
    _edit_tensors(path, lambda t: t.update({"model.norm.weight": np.ones(64, np.int32)}))
    with pytest.raises(CheckpointError, match=r"model\.norm\.weight.*dtype I32"):
        HFCheckpoint(path)
