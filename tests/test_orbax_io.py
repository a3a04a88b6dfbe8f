"""The orbax checkpoint format: convert -> load round trips, save_checkpoint, atomic output, bad checkpoints."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import kinetics_jax as kj
from kinetics_jax.checkpoint import CheckpointError, orbax_io


def _params(model) -> dict:
    return {path: np.asarray(var.get_value()) for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _assert_same_model(a, b) -> None:
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for path in pa:
        assert pa[path].dtype == pb[path].dtype, path
        np.testing.assert_array_equal(pa[path], pb[path], err_msg=str(path))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, a.config.vocab_size, (2, 33)), jnp.int32)
    np.testing.assert_array_equal(np.asarray(a(ids)), np.asarray(b(ids)))


@pytest.mark.parametrize("name", ["dense_tied_g2", "moe_mixed_sharded"])
def test_convert_then_load_is_identical(name, hf_checkpoints, tmp_path):
    out = tmp_path / "orbax"
    kj.convert_hf_checkpoint(hf_checkpoints[name], out)
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "params"]
    direct = kj.load_hf_checkpoint(hf_checkpoints[name], dtype=jnp.float32)
    restored = kj.load_checkpoint(out, dtype=jnp.float32)
    assert restored.config == direct.config
    _assert_same_model(direct, restored)


def test_relative_paths(hf_checkpoints, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    kj.convert_hf_checkpoint(hf_checkpoints["dense_tied_g2"], "runs/ckpt")
    kj.load_checkpoint("runs/ckpt", dtype=jnp.float32)


def test_convert_with_dtype_cast(hf_checkpoints, tmp_path):
    out = tmp_path / "bf16"
    kj.convert_hf_checkpoint(hf_checkpoints["dense_untied_g1"], out, dtype=jnp.bfloat16)
    restored = kj.load_checkpoint(out, dtype=jnp.bfloat16)
    direct = kj.load_hf_checkpoint(hf_checkpoints["dense_untied_g1"], dtype=jnp.bfloat16)
    _assert_same_model(direct, restored)


def test_save_checkpoint_round_trip(tmp_path):
    config = kj.Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=4,
                            num_experts_per_tok=2, moe_intermediate_size=16, decoder_sparse_step=1,
                            mlp_only_layers=(1,))
    model = kj.Qwen3ForCausalLM(config, rngs=nnx.Rngs(7))
    kj.save_checkpoint(model, tmp_path / "ckpt")
    _assert_same_model(model, kj.load_checkpoint(tmp_path / "ckpt", dtype=jnp.float32))


def test_existing_output_is_refused_then_replaced_with_overwrite(hf_checkpoints, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="already exists"):
        kj.convert_hf_checkpoint(hf_checkpoints["dense_tied_g2"], out)
    assert os.listdir(out) == ["keep.txt"]
    kj.convert_hf_checkpoint(hf_checkpoints["dense_tied_g2"], out, overwrite=True)
    assert "keep.txt" not in os.listdir(out) and "params" in os.listdir(out)
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary directories left behind


def test_failed_conversion_writes_nothing(hf_checkpoints, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for f in os.listdir(hf_checkpoints["dense_g4_sharded"]):
        if f != "model.safetensors.index.json":
            os.link(os.path.join(hf_checkpoints["dense_g4_sharded"], f), src / f)
    index = json.load(open(os.path.join(hf_checkpoints["dense_g4_sharded"], "model.safetensors.index.json")))
    index["weight_map"]["model.layers.3.mlp.up_proj.weight"] = "model-missing.safetensors"
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="model-missing.safetensors"):
        kj.convert_hf_checkpoint(src, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["src"]


def _fail_on_save(monkeypatch, n: int) -> None:
    """Makes the n-th orbax partial save of the test raise OSError("disk full"); `monkeypatch.undo()` restores."""
    real_save, calls = orbax_io.ocp.partial.save, []

    def failing_save(path, tree):
        calls.append(path)
        if len(calls) == n:
            raise OSError("disk full")
        return real_save(path, tree)

    monkeypatch.setattr(orbax_io.ocp.partial, "save", failing_save)


def test_failed_write_leaves_no_output_and_resumes(hf_checkpoints, tmp_path, monkeypatch):
    """An I/O failure in the 3rd write group leaves nothing at out_dir; a rerun resumes and completes."""
    _fail_on_save(monkeypatch, 3)
    with pytest.raises(OSError, match="disk full"):
        kj.convert_hf_checkpoint(hf_checkpoints["dense_g4_sharded"], tmp_path / "out")
    assert os.listdir(tmp_path) == [".out.partial"]
    journal = json.load(open(tmp_path / ".out.partial" / orbax_io.JOURNAL))
    assert len(journal["done"]) == 2
    monkeypatch.undo()
    kj.convert_hf_checkpoint(hf_checkpoints["dense_g4_sharded"], tmp_path / "out")
    assert os.listdir(tmp_path) == ["out"]
    _assert_same_model(kj.load_hf_checkpoint(hf_checkpoints["dense_g4_sharded"], dtype=jnp.float32),
                       kj.load_checkpoint(tmp_path / "out", dtype=jnp.float32))


def test_resume_when_journal_lags_a_committed_group(hf_checkpoints, tmp_path, monkeypatch):
    """Killed after orbax committed a group but before the journal recorded it: the rerun still completes."""
    real_write_json, writes = orbax_io._write_json, []

    def dying_journal(path, value):
        writes.append(value)
        if len(writes) == 4:  # the initial journal, two finished groups, then the 3rd group's update fails
            raise KeyboardInterrupt
        real_write_json(path, value)

    monkeypatch.setattr(orbax_io, "_write_json", dying_journal)
    with pytest.raises(KeyboardInterrupt):
        kj.convert_hf_checkpoint(hf_checkpoints["moe_mixed_sharded"], tmp_path / "out")
    monkeypatch.setattr(orbax_io, "_write_json", real_write_json)
    kj.convert_hf_checkpoint(hf_checkpoints["moe_mixed_sharded"], tmp_path / "out")
    _assert_same_model(kj.load_hf_checkpoint(hf_checkpoints["moe_mixed_sharded"], dtype=jnp.float32),
                       kj.load_checkpoint(tmp_path / "out", dtype=jnp.float32))


def test_changed_source_restarts_instead_of_resuming(hf_checkpoints, tmp_path, monkeypatch):
    _fail_on_save(monkeypatch, 2)
    with pytest.raises(OSError):
        kj.convert_hf_checkpoint(hf_checkpoints["dense_tied_g2"], tmp_path / "out")
    monkeypatch.undo()
    # Same output, different dtype: the partial float32 groups must not be mixed into a bfloat16 checkpoint.
    kj.convert_hf_checkpoint(hf_checkpoints["dense_tied_g2"], tmp_path / "out", dtype=jnp.bfloat16)
    restored = kj.load_checkpoint(tmp_path / "out", dtype=jnp.bfloat16)
    _assert_same_model(kj.load_hf_checkpoint(hf_checkpoints["dense_tied_g2"], dtype=jnp.bfloat16), restored)


def test_checkpoint_config_mismatch_is_reported(hf_checkpoints, tmp_path):
    out = tmp_path / "ckpt"
    kj.convert_hf_checkpoint(hf_checkpoints["dense_tied_g2"], out)
    config = json.load(open(out / "config.json"))
    config["num_hidden_layers"] = 4
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"missing .*layers\.3"):
        kj.load_checkpoint(out, dtype=jnp.float32)
    config["num_hidden_layers"], config["intermediate_size"] = 3, 90
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"mlp.*shape"):
        kj.load_checkpoint(out, dtype=jnp.float32)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(kj.Qwen3Config.preset("qwen3-0.6b").to_hf_dict()))
    with pytest.raises(CheckpointError, match="params"):
        kj.load_checkpoint(tmp_path, dtype=jnp.float32)
