"""The orbax checkpoint format: convert -> load round trips, save_checkpoint, atomic output, bad checkpoints."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

import kinetics_jax as kj
from kinetics_jax import outputs
from kinetics_jax.checkpoint import CheckpointError, layout, orbax_io


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
    with pytest.raises(outputs.OutputError, match="already exists"):
        kj.convert_hf_checkpoint(hf_checkpoints["dense_tied_g2"], out)
    assert os.listdir(out) == ["keep.txt"]
    kj.convert_hf_checkpoint(hf_checkpoints["dense_tied_g2"], out, overwrite=True)
    assert "keep.txt" not in os.listdir(out) and "params" in os.listdir(out)
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary directories left behind


def test_overwriting_a_plain_file_leaves_nothing_behind(hf_checkpoints, tmp_path):
    (tmp_path / "out").write_text("not a checkpoint")
    kj.convert_hf_checkpoint(hf_checkpoints["dense_tied_g2"], tmp_path / "out", overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["out"]  # it used to leave .out.old (rmtree of a file failed silently)
    assert "params" in os.listdir(tmp_path / "out")


def test_output_that_is_or_holds_the_source_is_refused(hf_checkpoints, tmp_path):
    """--hf_dir=X --output_dir=X --overwrite used to convert and then delete the source safetensors."""
    src = tmp_path / "models" / "src"
    shutil.copytree(hf_checkpoints["dense_tied_g2"], src)
    before = sorted(os.listdir(src))
    for out in (src, tmp_path / "models", tmp_path / "models" / "src" / ".." / "src"):
        with pytest.raises(outputs.OutputError, match="is or holds the source"):
            kj.convert_hf_checkpoint(src, out, overwrite=True)
    assert sorted(os.listdir(src)) == before and sorted(os.listdir(tmp_path / "models")) == ["src"]
    kj.convert_hf_checkpoint(src, src / "orbax")  # inside the source is fine: replacing it deletes no source
    assert "params" in os.listdir(src / "orbax")


def test_a_second_conversion_to_one_output_is_refused(hf_checkpoints, tmp_path):
    """Two conversions to one --output_dir shared .<name>.partial and its journal (one then reported success and
    left a checkpoint missing lm_head): the output's lock now refuses the second writer before it writes."""
    out = tmp_path / "out"
    with outputs.exclusive(out, directory=True):  # another conversion holds it
        with pytest.raises(outputs.OutputBusyError, match="out is already being written by this process"):
            kj.convert_hf_checkpoint(hf_checkpoints["dense_tied_g2"], out)
        assert not os.path.exists(tmp_path / ".out.partial")
    kj.convert_hf_checkpoint(hf_checkpoints["dense_tied_g2"], out)
    assert sorted(os.listdir(tmp_path)) == ["out"]


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


@pytest.fixture(scope="module")
def converted(hf_checkpoints, tmp_path_factory) -> str:
    """A converted tiny checkpoint, copied (never changed) by the damage tests."""
    out = tmp_path_factory.mktemp("converted") / "ckpt"
    kj.convert_hf_checkpoint(hf_checkpoints["dense_tied_g2"], out)
    return os.fspath(out)


def _damage(path: str, how: str) -> None:
    size = os.path.getsize(path)
    if how == "truncate":
        os.truncate(path, size // 2)
    elif how == "zero":
        with open(path, "r+b") as f:
            f.write(b"\0" * size)
    else:
        os.remove(path)


# (files under params/, how they are damaged, what the one-line error says). The per-array data files live in
# ocdbt.process_*/d/; params/*/d/ holds the b-tree nodes; manifest.ocdbt, _METADATA and array_metadatas/ index
# them. Every case used to raise a TensorStore text of ~80 lines, an AttributeError or a JSONDecodeError.
DAMAGE = [
    ("ocdbt.process_*/d/*", "truncate", r"cannot read array [\w.]+: OUT_OF_RANGE: \.\.\..*Requested byte range"),
    ("ocdbt.process_*/d/*", "zero", r"cannot read array [\w.]+: DATA_LOSS: \.\.\..*Digest mismatch"),
    ("ocdbt.process_*/d/*", "delete", r"cannot read array [\w.]+: DATA_LOSS: "),
    ("manifest.ocdbt", "truncate", r"array metadata is unreadable: DATA_LOSS: .*Error decoding manifest"),
    ("d/*", "zero", r"array metadata is unreadable: DATA_LOSS: .*Error decoding b-tree node"),
    ("_METADATA", "truncate", r"array metadata is unreadable: Unterminated string"),
    ("array_metadatas/*", "truncate", r"cannot read array [\w.]+: JSONDecodeError: "),
]


# orbax leaves the reads still in flight after the first failure as coroutines that Python reports when they are
# collected; that is orbax's noise, not the error under test.
ORBAX_LEFTOVERS = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@ORBAX_LEFTOVERS
@pytest.mark.parametrize("pattern,how,message", DAMAGE)
def test_damaged_checkpoint_fails_with_one_line(converted, tmp_path, pattern, how, message):
    ckpt = shutil.copytree(converted, tmp_path / "ckpt")
    files = sorted(glob.glob(os.path.join(ckpt, orbax_io.PARAMS_DIR, "*", pattern)))
    assert files, pattern
    for file in files:
        _damage(file, how)
    with pytest.raises(CheckpointError) as error:
        kj.load_checkpoint(ckpt, dtype=jnp.float32)
    text = str(error.value)
    assert "\n" not in text and len(text) < 320 + len(os.fspath(ckpt)), text
    assert os.fspath(ckpt) in text and re.search(message, text), text


@ORBAX_LEFTOVERS
def test_each_damaged_layer_is_named(converted, tmp_path):
    """The layers of a stacked leaf are restored in one call; the error still names the layer that is damaged.
    Each data file holds one write group (one layer, or one global array): deleting one names an array of it."""
    named = set()
    data = os.path.join(orbax_io.PARAMS_DIR, "*", "ocdbt.process_*", "d", "*")
    for i, file in enumerate(sorted(glob.glob(os.path.join(converted, data)))):
        ckpt = shutil.copytree(converted, tmp_path / str(i))
        os.remove(os.path.join(ckpt, os.path.relpath(file, converted)))
        try:
            kj.load_checkpoint(ckpt, dtype=jnp.float32)
        except CheckpointError as e:
            named.add(layout.write_group(re.search(r"cannot read array ([\w.]+):", str(e)).group(1)))
    assert {"layers.0", "layers.1", "layers.2"} <= named, named


@pytest.mark.parametrize("dtype,message", [
    ("int8", "dtype int8 is not supported: use one of bfloat16, float16, float32"),   # wrote an all-zero model
    ("int32", "dtype int32 is not supported"),
    ("bool", "dtype bool is not supported"),                                          # wrote an all-ones model
    ("float64", "dtype float64 is not supported"),                                    # wrote float32
    ("bf17", "dtype 'bf17' is not a dtype"),                                          # TypeError
])
def test_convert_refuses_non_float_dtypes_before_writing(hf_checkpoints, tmp_path, dtype, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        kj.convert_hf_checkpoint(hf_checkpoints["dense_tied_g2"], tmp_path / "out", dtype=dtype)
    assert os.listdir(tmp_path) == []


def test_convert_refuses_a_float64_source_without_a_dtype(hf_checkpoints, tmp_path):
    src = shutil.copytree(hf_checkpoints["dense_tied_g2"], tmp_path / "src")
    tensors = load_file(src / "model.safetensors")
    save_file({k: v.astype(np.float64) for k, v in tensors.items()}, src / "model.safetensors")
    with pytest.raises(ValueError, match="stores float64 tensors, which the checkpoint format does not keep"):
        kj.convert_hf_checkpoint(src, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["src"]
    kj.convert_hf_checkpoint(src, tmp_path / "out", dtype=jnp.float32)


@pytest.mark.parametrize("dtype", ["int8", None, "float64"])
def test_load_checkpoint_and_load_model_refuse_non_float_dtypes(dtype):
    with pytest.raises(ValueError, match=f"dtype {dtype} is not supported"):
        kj.load_checkpoint("tiny-s", dtype=dtype)
    with pytest.raises(ValueError, match=f"dtype {dtype} is not supported"):
        kj.load_model("tiny-s", dtype=dtype)


def test_integer_checkpoint_is_refused(tmp_path):
    """A checkpoint whose arrays are integers (as the int8 conversion wrote) would load as all zeros."""
    config = kj.Qwen3Config(vocab_size=16, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=4, tie_word_embeddings=True)
    model = kj.Qwen3ForCausalLM(config, rngs=nnx.Rngs(0))
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        var.set_value(var.get_value().astype(jnp.int8))
    kj.save_checkpoint(model, tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match=r"array '[\w.]+' in .* has dtype int8; only floating checkpoints"):
        kj.load_checkpoint(tmp_path / "ckpt", dtype=jnp.float32)


def test_missing_checkpoint_directory(tmp_path):
    with pytest.raises(CheckpointError, match=f"checkpoint directory not found: {tmp_path / 'nowhere'}"):
        kj.load_checkpoint(tmp_path / "nowhere", dtype=jnp.float32)
