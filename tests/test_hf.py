"""Hugging Face checkpoint reading: both expert spellings, tied copies, and every malformed-input error."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct

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


def test_tie_word_embeddings_string_is_refused(hf_checkpoints, tmp_path):
    """"false" is a (truthy) string, not a boolean: it used to make an untied checkpoint "tied", then fail with
    "config.json says tie_word_embeddings=true"."""
    path = _copy(hf_checkpoints["dense_untied_g1"], tmp_path / "ckpt")
    config = json.load(open(os.path.join(path, "config.json")))
    config["tie_word_embeddings"] = "false"
    json.dump(config, open(os.path.join(path, "config.json"), "w"))
    with pytest.raises(ValueError, match=r"config\.json: tie_word_embeddings must be a boolean \(true or false\), "
                                         r"got 'false' \(str\)"):
        kj.load_hf_checkpoint(path, dtype=jnp.float32)


def _index_with(path: str, edit) -> None:
    file = os.path.join(path, "model.safetensors.index.json")
    index = json.load(open(file))
    with open(file, "w") as f:
        json.dump(edit(index), f)


def _first_tensor_maps_to(shard):
    def edit(index):
        index["weight_map"][next(iter(index["weight_map"]))] = shard
        return index
    return edit


# Each used to raise a raw AttributeError or TypeError, or a one-line message without the cause.
@pytest.mark.parametrize("edit,message", [
    (lambda index: [1, 2], r"a JSON array, not an object"),
    (lambda index: "weights", r"a JSON string, not an object"),
    (lambda index: {"metadata": {}}, r"no 'weight_map'"),
    (lambda index: {"weight_map": [1, 2]}, r"'weight_map' is a JSON array, not an object"),
    (lambda index: {"weight_map": "model.safetensors"}, r"'weight_map' is a JSON string, not an object"),
    (_first_tensor_maps_to(5), r"tensor '[\w.]+' maps to 5, not a file name in the checkpoint directory"),
    (_first_tensor_maps_to(None), r"tensor '[\w.]+' maps to None, not a file name"),
    (_first_tensor_maps_to({"file": "x"}), r"tensor '[\w.]+' maps to \{'file': 'x'\}, not a file name"),
    (_first_tensor_maps_to("../model-00001-of-00002.safetensors"), r"tensor '[\w.]+' maps to '\.\./model-\S+'"),
])
def test_malformed_index(hf_checkpoints, tmp_path, edit, message):
    path = _copy(hf_checkpoints["dense_g4_sharded"], tmp_path / "ckpt")
    _index_with(path, edit)
    with pytest.raises(CheckpointError, match=r"^model\.safetensors\.index\.json: corrupt index \(" + message):
        HFCheckpoint(path)


def test_unreadable_index_and_config(hf_checkpoints, tmp_path):
    path = _copy(hf_checkpoints["dense_g4_sharded"], tmp_path / "ckpt")
    index = os.path.join(path, "model.safetensors.index.json")
    with open(index, "wb") as f:
        f.write(b"\x80not json")
    with pytest.raises(CheckpointError, match=r"^model\.safetensors\.index\.json: corrupt index \("):
        HFCheckpoint(path)
    os.remove(index)
    os.mkdir(index)
    with pytest.raises(CheckpointError, match=r"^model\.safetensors\.index\.json: cannot be read \(Is a directory\)"):
        HFCheckpoint(path)
    os.remove(os.path.join(path, "config.json"))
    os.mkdir(os.path.join(path, "config.json"))
    with pytest.raises(ValueError, match=r"config\.json is a directory, not a file"):
        HFCheckpoint(path)


def _rewrite_header(path: str, edit) -> None:
    """Replaces the JSON header of path/model.safetensors by edit(header) (bytes are written as they are)."""
    file = os.path.join(path, "model.safetensors")
    data = open(file, "rb").read()
    (length,) = struct.unpack("<Q", data[:8])
    header = edit(json.loads(data[8:8 + length]))
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(file, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + data[8 + length:])


def _norm_entry(**change):
    return lambda header: header | {"model.norm.weight": header["model.norm.weight"] | change}


@pytest.mark.parametrize("edit,message", [
    (lambda header: [1], r"corrupt safetensors header \(a JSON array, not an object\)"),         # AttributeError
    (lambda header: 5, r"corrupt safetensors header \(a JSON number, not an object\)"),
    (lambda header: b"[" * 100_000 + b"]" * 100_000, r"corrupt safetensors header \(maximum recursion"),
    (_norm_entry(shape="ab"), r"corrupt safetensors header entry for tensor 'model\.norm\.weight'"),  # UFuncTypeError
    (_norm_entry(shape=[-64]), r"corrupt safetensors header entry for tensor 'model\.norm\.weight'"),
    (_norm_entry(shape=[64.0]), r"corrupt safetensors header entry for tensor 'model\.norm\.weight'"),
    (_norm_entry(data_offsets=["0", "256"]), r"corrupt safetensors header entry"),                  # TypeError
    (_norm_entry(data_offsets=[0]), r"corrupt safetensors header entry"),
    (_norm_entry(dtype=["F32"]), r"corrupt safetensors header entry"),                              # TypeError
    (lambda header: header | {"model.norm.weight": "F32"}, r"corrupt safetensors header entry"),
    (_norm_entry(data_offsets=[10**30, 10**30 + 256]), r"file is truncated: tensor 'model\.norm\.weight' ends"),
    (_norm_entry(shape=[10**30]), r"corrupt header: tensor 'model\.norm\.weight' of shape \(10+,\)"),
])
def test_malformed_safetensors_header(hf_checkpoints, tmp_path, edit, message):
    path = _copy(hf_checkpoints[BAD], tmp_path / "ckpt")
    _rewrite_header(path, edit)
    with pytest.raises(CheckpointError, match=r"^model\.safetensors: " + message):
        HFCheckpoint(path)


def test_safetensors_file_shorter_than_its_header(hf_checkpoints, tmp_path):
    path = _copy(hf_checkpoints[BAD], tmp_path / "ckpt")
    file = os.path.join(path, "model.safetensors")
    os.truncate(file, 4)
    with pytest.raises(CheckpointError, match=r"^model\.safetensors: file is truncated \(no safetensors header\)$"):
        HFCheckpoint(path)
    with open(file, "wb") as f:
        f.write(struct.pack("<Q", 10**6) + b"{}")
    with pytest.raises(CheckpointError, match=r"^model\.safetensors: file is truncated or corrupt \(header of "
                                              r"1000000 bytes, file of 10 bytes\)$"):
        HFCheckpoint(path)


def test_safetensors_file_that_is_a_directory(hf_checkpoints, tmp_path):
    path = _copy(hf_checkpoints[BAD], tmp_path / "ckpt")
    os.remove(os.path.join(path, "model.safetensors"))
    os.mkdir(os.path.join(path, "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"^model\.safetensors: cannot be read \(Is a directory\)"):
        HFCheckpoint(path)


@pytest.mark.parametrize("dtype,message", [
    ("int8", "dtype int8 is not supported: use one of bfloat16, float16, float32"),
    (jnp.int32, "dtype int32 is not supported"),
    ("bool", "dtype bool is not supported"),
    ("float64", "dtype float64 is not supported"),
    (None, "dtype None is not supported"),
    ("bf17", "dtype 'bf17' is not a dtype: use one of bfloat16, float16, float32"),
])
def test_load_refuses_non_float_dtypes_before_reading(tmp_path, dtype, message):
    """An integer dtype used to fail deep in the initializers; float64 and None used to load as float32."""
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        kj.load_hf_checkpoint(tmp_path / "not-read", dtype=dtype)
    assert type(error.value) is ValueError  # the dtype, not the (missing) checkpoint
    if dtype is not None:  # param_dtype=None means "as dtype"
        with pytest.raises(ValueError, match=re.escape(message.replace("dtype", "param_dtype", 1))):
            kj.load_hf_checkpoint(tmp_path / "not-read", dtype=jnp.float32, param_dtype=dtype)
