"""Hugging Face safetensors checkpoints: validation, streaming reads, and the HF <-> canonical name map.

`HFCheckpoint(hf_dir)` reads config.json and every safetensors header (never the tensor data) and checks the
whole checkpoint up front: missing or unexpected tensors, wrong shapes (a config that disagrees with the
weights), truncated or corrupt files, a missing index shard. Only then are tensors read, one at a time, through
plain positioned reads (no memory map, so only the tensor being read is resident). Expert weights may be stored
per expert (`mlp.experts.{e}.gate_proj.weight`, what `save_pretrained` writes) or fused
(`mlp.experts.gate_up_proj` [E, 2*moe_mlp, hidden] and `mlp.experts.down_proj` [E, hidden, moe_mlp], transformers 5
in-memory layout).
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from typing import Callable, Sequence

import jax
import ml_dtypes
import numpy as np
from jax.sharding import Mesh

from kinetics_jax.config import Qwen3Config
from kinetics_jax.model import Qwen3ForCausalLM
from kinetics_jax.checkpoint import layout
from kinetics_jax.model.layers import DType

_FLOAT_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64}
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}


# The dtypes a model can be loaded or converted in. A cast to an integer or boolean dtype destroys the weights
# (int8 truncates them all to 0), and float64 does not survive jax's default float32 (nor the orbax restore).
DTYPES = ("bfloat16", "float16", "float32")


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, or does not match its config. The message names the file or tensor."""


def checked_dtype(dtype: DType, what: str = "dtype") -> np.dtype:
    """`dtype` as a numpy dtype if it is one of DTYPES; otherwise ValueError naming `what` and the dtype.

    The one rule for every dtype a checkpoint is loaded or converted to. None is refused too: callers for which
    None means "keep the stored dtype" test it first."""
    try:
        resolved = None if dtype is None else np.dtype(dtype)
    except (TypeError, ValueError):
        raise ValueError(f"{what} {dtype!r} is not a dtype: use one of {', '.join(DTYPES)}") from None
    if resolved is None or resolved.name not in DTYPES:
        name = "None" if resolved is None else resolved.name
        raise ValueError(f"{what} {name} is not supported: use one of {', '.join(DTYPES)}")
    return resolved


@dataclasses.dataclass(frozen=True)
class _TensorInfo:
    file: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in the file


@dataclasses.dataclass(frozen=True)
class _Source:
    """How one canonical array is made from HF tensors: read `names` (each of `hf_shape`, optionally only the
    `index` part), stack them if there are several, then `convert` to the canonical layout."""

    names: tuple[str, ...]
    hf_shape: tuple[int, ...]
    convert: Callable[[np.ndarray], np.ndarray]
    index: tuple[slice, ...] | None = None


def _json_type(value: object) -> str:
    """The JSON name of a parsed JSON value's type ("array" for a list, "null" for None), for messages."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _is_count(value: object) -> bool:
    """A non-negative JSON integer (never a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _header_entry(path: str, tensor: str, entry: object, data_size: int, data_start: int) -> _TensorInfo:
    """One checked safetensors header entry: a string dtype, a shape of counts, [begin, end] offsets inside the
    data section (which has `data_size` bytes from byte `data_start`) that span exactly the shape's bytes (for
    the float dtypes)."""
    name = os.path.basename(path)
    corrupt = CheckpointError(f"{name}: corrupt safetensors header entry for tensor {tensor!r}")
    if not isinstance(entry, dict):
        raise corrupt
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if (not isinstance(dtype, str) or not isinstance(shape, list) or not all(map(_is_count, shape))
            or not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_count, offsets))):
        raise corrupt
    begin, end = offsets
    if end > data_size:
        raise CheckpointError(f"{name}: file is truncated: tensor {tensor!r} ends at byte {end} of the data "
                              f"section, which has {data_size} bytes")
    size = 1
    for dim in shape:
        size *= dim  # Python ints: a huge corrupt shape cannot overflow
    if begin > end or (dtype in _DTYPE_BYTES and end - begin != size * _DTYPE_BYTES[dtype]):
        raise CheckpointError(f"{name}: corrupt header: tensor {tensor!r} of shape {tuple(shape)} and dtype "
                              f"{dtype} spans bytes [{begin}, {end})")
    return _TensorInfo(path, dtype, tuple(shape), data_start + begin)


def _json_object(data: bytes, what: str) -> dict:
    """The JSON object in `data` (UTF-8), or CheckpointError("<what> (<why>)")."""
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: nested too deeply
        raise CheckpointError(f"{what} ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{what} (a JSON {_json_type(value)}, not an object)")
    return value


def _read_header(path: str) -> dict[str, _TensorInfo]:
    """Parses one safetensors header and checks that every tensor's bytes lie inside the file."""
    name = os.path.basename(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise CheckpointError(f"{name}: file is truncated (no safetensors header)")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > size - 8:
                raise CheckpointError(f"{name}: file is truncated or corrupt (header of {header_len} bytes, "
                                      f"file of {size} bytes)")
            header_bytes = f.read(header_len)
    except FileNotFoundError:
        raise CheckpointError(f"safetensors file not found: {path}") from None
    except OSError as e:
        raise CheckpointError(f"{name}: cannot be read ({e.strerror or e})") from None
    header = _json_object(header_bytes, f"{name}: corrupt safetensors header")
    header.pop("__metadata__", None)
    return {tensor: _header_entry(path, tensor, entry, size - 8 - header_len, 8 + header_len)
            for tensor, entry in header.items()}


def _read_weight_map(index_path: str) -> dict[str, str]:
    """The checked `weight_map` of a model.safetensors.index.json: an object of tensor name -> shard file name
    (a plain file name in the checkpoint directory)."""
    name = os.path.basename(index_path)
    try:
        with open(index_path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CheckpointError(f"{name}: cannot be read ({e.strerror or e})") from None
    index = _json_object(data, f"{name}: corrupt index")
    if "weight_map" not in index:
        raise CheckpointError(f"{name}: corrupt index (no 'weight_map')")
    weight_map = index["weight_map"]
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{name}: corrupt index ('weight_map' is a JSON {_json_type(weight_map)}, not an "
                              f"object)")
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str) or not shard or os.path.basename(shard) != shard or shard in (".", ".."):
            raise CheckpointError(f"{name}: corrupt index (tensor {tensor!r} maps to {shard!r}, not a file name "
                                  f"in the checkpoint directory)")
    return weight_map


def _read_index(hf_dir: str) -> dict[str, _TensorInfo]:
    """All tensors of the checkpoint: model.safetensors, or the shards listed in model.safetensors.index.json."""
    index_path = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.exists(index_path):
        weight_map = _read_weight_map(index_path)
        tensors: dict[str, _TensorInfo] = {}
        for shard in sorted(set(weight_map.values())):
            path = os.path.join(hf_dir, shard)
            if not os.path.exists(path):
                raise CheckpointError(f"index shard {shard} listed in model.safetensors.index.json is missing")
            tensors.update(_read_header(path))
        for tensor, shard in weight_map.items():
            if tensor not in tensors or os.path.basename(tensors[tensor].file) != shard:
                raise CheckpointError(f"tensor {tensor!r} is listed in model.safetensors.index.json under {shard} "
                                      f"but that file does not contain it")
        return tensors
    single = os.path.join(hf_dir, "model.safetensors")
    if not os.path.exists(single):
        raise CheckpointError(f"no model.safetensors or model.safetensors.index.json in {hf_dir}")
    return _read_header(single)


def _sources(config: Qwen3Config, tensors: dict[str, _TensorInfo]) -> dict[str, _Source]:
    """The HF recipe of every canonical key. Expert spelling (fused or per expert) is chosen per layer from
    the tensors present."""
    h, d, hq, hkv = config.hidden_size, config.head_dim, config.num_attention_heads, config.num_key_value_heads
    t = lambda a: a.T  # noqa: E731  (HF Linear [out, in] -> kernel [in, out])
    src = {"embed_tokens.embedding": _Source(("model.embed_tokens.weight",), (config.vocab_size, h), lambda a: a),
           "norm.scale": _Source(("model.norm.weight",), (h,), lambda a: a)}
    if not config.tie_word_embeddings:
        src["lm_head"] = _Source(("lm_head.weight",), (config.vocab_size, h), t)
    for i in range(config.num_hidden_layers):
        p, k = f"model.layers.{i}.", f"layers.{i}."
        src[k + "input_layernorm.scale"] = _Source((p + "input_layernorm.weight",), (h,), lambda a: a)
        src[k + "post_attention_layernorm.scale"] = _Source((p + "post_attention_layernorm.weight",), (h,),
                                                            lambda a: a)
        src[k + "self_attn.q_norm.scale"] = _Source((p + "self_attn.q_norm.weight",), (d,), lambda a: a)
        src[k + "self_attn.k_norm.scale"] = _Source((p + "self_attn.k_norm.weight",), (d,), lambda a: a)
        src[k + "self_attn.q_proj"] = _Source((p + "self_attn.q_proj.weight",), (hq * d, h),
                                              lambda a: a.reshape(hq, d, h))
        for name in ("k_proj", "v_proj"):
            src[k + f"self_attn.{name}"] = _Source((p + f"self_attn.{name}.weight",), (hkv * d, h),
                                                   lambda a: a.reshape(hkv, d, h))
        src[k + "self_attn.o_proj"] = _Source((p + "self_attn.o_proj.weight",), (h, hq * d),
                                              lambda a: a.T.reshape(hq, d, h))
        if not config.is_moe_layer(i):
            m = config.intermediate_size
            src[k + "mlp.gate_proj"] = _Source((p + "mlp.gate_proj.weight",), (m, h), t)
            src[k + "mlp.up_proj"] = _Source((p + "mlp.up_proj.weight",), (m, h), t)
            src[k + "mlp.down_proj"] = _Source((p + "mlp.down_proj.weight",), (h, m), t)
            continue
        e, m = config.num_experts, config.moe_intermediate_size
        swap = lambda a: a.transpose(0, 2, 1)  # noqa: E731  ([E, out, in] -> [E, in, out])
        src[k + "mlp.router"] = _Source((p + "mlp.gate.weight",), (e, h), t)
        if p + "mlp.experts.gate_up_proj" in tensors:
            fused = (p + "mlp.experts.gate_up_proj",)
            src[k + "mlp.gate_proj"] = _Source(fused, (e, 2 * m, h), swap, (slice(None), slice(0, m)))
            src[k + "mlp.up_proj"] = _Source(fused, (e, 2 * m, h), swap, (slice(None), slice(m, 2 * m)))
            src[k + "mlp.down_proj"] = _Source((p + "mlp.experts.down_proj",), (e, h, m), swap)
        else:
            for name, shape in (("gate_proj", (m, h)), ("up_proj", (m, h)), ("down_proj", (h, m))):
                names = tuple(f"{p}mlp.experts.{j}.{name}.weight" for j in range(e))
                src[k + f"mlp.{name}"] = _Source(names, shape, swap)
    return src


def _summarize(names: Sequence[str], limit: int = 5) -> str:
    names = sorted(names)
    more = f" (and {len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


class HFCheckpoint:
    """A validated Hugging Face Qwen3 checkpoint directory. Construction reads only config and headers."""

    def __init__(self, hf_dir: str | os.PathLike):
        self.hf_dir = os.fspath(hf_dir)
        if not os.path.isdir(self.hf_dir):
            raise CheckpointError(f"checkpoint directory not found: {self.hf_dir}")
        self.config = Qwen3Config.from_hf_config(self.hf_dir)
        self._tensors = _read_index(self.hf_dir)
        self._sources = _sources(self.config, self._tensors)
        self._check()

    def _check(self) -> None:
        expected = {name for s in self._sources.values() for name in s.names}
        missing = expected - set(self._tensors)
        if missing:
            raise CheckpointError(f"checkpoint is missing {len(missing)} tensor(s): {_summarize(missing)}")
        unexpected = set(self._tensors) - expected
        # A tied checkpoint may still carry a copy of the embedding as lm_head.weight; it is checked, then unused.
        self._tied_copy = self.config.tie_word_embeddings and "lm_head.weight" in unexpected
        if self._tied_copy:
            unexpected.discard("lm_head.weight")
        if unexpected:
            raise CheckpointError(f"checkpoint has {len(unexpected)} unexpected tensor(s) for this config: "
                                  f"{_summarize(unexpected)}")
        shape_of = {name: s.hf_shape for s in self._sources.values() for name in s.names}
        if self._tied_copy:
            shape_of["lm_head.weight"] = shape_of["model.embed_tokens.weight"]
        for name, shape in shape_of.items():
            info = self._tensors[name]
            if info.shape != shape:
                raise CheckpointError(f"tensor {name!r} in {os.path.basename(info.file)} has shape {info.shape}, "
                                      f"but config.json implies {shape}: the config disagrees with the weights")
            if info.dtype not in _FLOAT_DTYPES:
                raise CheckpointError(f"tensor {name!r} has dtype {info.dtype}; only float checkpoints "
                                      f"({', '.join(_FLOAT_DTYPES)}) are supported")

    def stored_dtypes(self) -> set[str]:
        """The safetensors dtypes ("BF16", "F32", ...) of the tensors the model is built from."""
        return {self._tensors[name].dtype for source in self._sources.values() for name in source.names}

    def num_tensors(self, key: str) -> int:
        """HF tensors read to build `key`."""
        return len(self._sources[key].names)

    def _read_tensor(self, name: str, index: tuple[slice, ...] | None) -> np.ndarray:
        info = self._tensors[name]
        array = np.empty(info.shape, _FLOAT_DTYPES[info.dtype])
        with open(info.file, "rb") as f:
            f.seek(info.offset)
            if f.readinto(array.reshape(-1).view(np.uint8)) != array.nbytes:
                raise CheckpointError(f"{os.path.basename(info.file)}: file is truncated inside tensor {name!r}")
        return array[index] if index is not None else array

    def read(self, key: str, dtype: DType | None = None) -> np.ndarray:
        """The canonical array `key` as numpy, cast to `dtype` (None keeps the stored dtype)."""
        source = self._sources[key]
        parts = [self._read_tensor(name, source.index) for name in source.names]
        array = source.convert(parts[0] if len(parts) == 1 else np.stack(parts))
        return np.ascontiguousarray(array, dtype=dtype)

    def check_tied_copy(self) -> None:
        """A tied checkpoint's extra lm_head.weight must equal the embedding; anything else is refused."""
        if self._tied_copy and not np.array_equal(self._read_tensor("lm_head.weight", None),
                                                  self._read_tensor("model.embed_tokens.weight", None)):
            raise CheckpointError("tensor 'lm_head.weight' differs from 'model.embed_tokens.weight', but config.json "
                                  "says tie_word_embeddings=true")

    def write_groups(self) -> dict[str, list[str]]:
        """Canonical keys by `layout.write_group` (one decoder layer, or one global array), in model order."""
        groups: dict[str, list[str]] = {}
        for key in self._sources:
            groups.setdefault(layout.write_group(key), []).append(key)
        return groups

    def fingerprint(self) -> dict[str, list[int]]:
        """Size and mtime (ns) of config.json and every safetensors file: identifies this exact source."""
        files = sorted({info.file for info in self._tensors.values()} | {os.path.join(self.hf_dir, "config.json")})
        return {os.path.basename(f): [os.stat(f).st_size, os.stat(f).st_mtime_ns] for f in files}

    def reader(self) -> layout.ReadFn:
        """A `layout.ReadFn` that fills one host buffer per model leaf, then places it with the target's sharding
        (each process transfers only the shards its devices hold)."""

        def read(keys: Sequence[str], target: jax.ShapeDtypeStruct, stacked: bool) -> jax.Array:
            if stacked:
                buffer = np.empty(target.shape, target.dtype)
                for j, key in enumerate(keys):
                    buffer[j] = self.read(key, target.dtype)
            else:
                buffer = self.read(keys[0], target.dtype)
            return jax.make_array_from_callback(target.shape, target.sharding, lambda index: buffer[index])

        return read


def load_hf_checkpoint(hf_dir: str | os.PathLike, *, dtype: DType, param_dtype: DType | None = None,
                       mesh: Mesh | None = None) -> Qwen3ForCausalLM:
    """Loads a Hugging Face Qwen3 / Qwen3-MoE checkpoint directory into a `Qwen3ForCausalLM`.

    Tensors are read one at a time (positioned reads, no memory map) and placed leaf by leaf: peak host memory is
    the model plus one stacked parameter. `dtype` is the compute dtype; `param_dtype` the storage dtype (default:
    `dtype`). `mesh`: place the parameters on it by kinetics_jax.sharding.axes.RULES (default: this process's first
    device).
    Raises CheckpointError naming the file or tensor on any malformed input, and ValueError for a dtype not in
    DTYPES (before anything is read).
    """
    checked_dtype(dtype)
    if param_dtype is not None:
        checked_dtype(param_dtype, "param_dtype")
    checkpoint = HFCheckpoint(hf_dir)
    checkpoint.check_tied_copy()
    return layout.assemble(checkpoint.config, checkpoint.reader(), dtype=dtype,
                           param_dtype=dtype if param_dtype is None else param_dtype, mesh=mesh)
