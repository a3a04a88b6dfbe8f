"""Qwen3 / Qwen3-MoE model configuration.

`Qwen3Config` is a frozen dataclass holding exactly the architecture numbers the port needs. It is built from a
Hugging Face `config.json` (transformers 4.x or 5.x spelling) with `Qwen3Config.from_hf_config`, or from a named
size with `Qwen3Config.preset`. Derived numbers (parameter counts, KV-cache bytes per token, the dense/MoE layer
pattern) are methods, never stored fields, so they cannot disagree with the architecture.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, Mapping

import ml_dtypes  # noqa: F401  (registers "bfloat16" as a numpy dtype name)
import numpy as np

MODEL_TYPES = ("qwen3", "qwen3_moe")

# HF config fields that carry no architecture information for inference (training knobs, bookkeeping, token
# ids that belong to the tokenizer / generation config). They are accepted and ignored.
_IGNORED_HF_FIELDS = frozenset({
    "_name_or_path", "architectures", "attention_dropout", "bos_token_id", "chunk_size_feed_forward", "dtype",
    "eos_token_id", "id2label", "initializer_range", "is_encoder_decoder", "label2id", "max_window_layers",
    "output_attentions", "output_hidden_states", "output_router_logits", "pad_token_id", "problem_type",
    "return_dict", "router_aux_loss_coef", "sliding_window", "tokenizer_class", "torch_dtype",
    "transformers_version", "use_cache",
})

# HF config fields whose only supported value is the Qwen3 default; anything else changes the network and is
# rejected rather than silently ignored.
_FIXED_HF_FIELDS = {
    "hidden_act": "silu",
    "attention_bias": False,
    "use_sliding_window": False,
}

# The type of every field this port reads, in a config.json or passed to Qwen3Config (the one home for type
# checks). "int" refuses booleans (true is an int to Python) and floats (12.5, and 64.0 too); "number" is an int
# or float that is finite as a float; "bool" is true or false only (the string "false" is not a boolean). The
# rope_* names also apply inside `rope_scaling` / `rope_parameters`.
_FIELD_TYPES: dict[str, str] = {
    "vocab_size": "int", "hidden_size": "int", "intermediate_size": "int", "num_hidden_layers": "int",
    "num_attention_heads": "int", "num_key_value_heads": "int", "head_dim": "int",
    "max_position_embeddings": "int", "num_experts": "int", "num_local_experts": "int",
    "num_experts_per_tok": "int", "moe_intermediate_size": "int", "decoder_sparse_step": "int",
    "mlp_only_layers": "int list", "rms_norm_eps": "number", "rope_theta": "number",
    "tie_word_embeddings": "bool", "norm_topk_prob": "bool", "attention_bias": "bool",
    "use_sliding_window": "bool", "model_type": "string", "hidden_act": "string", "layer_types": "string list",
    "rope_scaling": "object", "rope_parameters": "object", "rope_type": "string", "type": "string",
}
_ROPE_FIELDS = ("rope_theta", "rope_type", "type")  # checked inside rope_scaling / rope_parameters
_NESTED_ONLY = ("rope_type", "type")  # at the top level these are unknown fields, not RoPE fields
_INT_LIMIT = 2**31  # every count and size is a 32-bit integer; a larger one is a corrupt config, not a model


class _WrongType(Exception):
    """Raised by a `_KINDS` converter for a value of another type."""


def _to_int(value: Any) -> int:
    """An int (numpy's too) in the 32-bit range, never a bool."""
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer))
            or not -_INT_LIMIT <= value < _INT_LIMIT):
        raise _WrongType
    return int(value)


def _to_number(value: Any) -> float:
    """An int or float (numpy's too) that is finite as a float, never a bool."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise _WrongType
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        raise _WrongType from None
    if not math.isfinite(number):
        raise _WrongType
    return number


def _to_bool(value: Any) -> bool:
    """True or False only: "false" and 0 are not booleans."""
    if not isinstance(value, (bool, np.bool_)):
        raise _WrongType
    return bool(value)


def _to_string(value: Any) -> str:
    if not isinstance(value, str):
        raise _WrongType
    return value


def _to_list(item: Callable[[Any], Any]) -> Callable[[Any], tuple]:
    """A converter for a list (or tuple) whose items each pass `item`; a string is not a list."""
    def convert(value: Any) -> tuple:
        if not isinstance(value, (list, tuple)):
            raise _WrongType
        return tuple(item(v) for v in value)
    return convert


def _to_object(value: Any) -> dict:
    if not isinstance(value, Mapping):
        raise _WrongType
    return dict(value)


# kind -> (what the message says the value must be, converter to the stored Python value).
_KINDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "int": ("a 32-bit integer", _to_int),
    "number": ("a finite number", _to_number),
    "bool": ("a boolean (true or false)", _to_bool),
    "string": ("a string", _to_string),
    "int list": ("a list of 32-bit integers", _to_list(_to_int)),
    "string list": ("a list of strings", _to_list(_to_string)),
    "object": ("an object (or null)", _to_object),
}


def _show(value: Any, limit: int = 60) -> str:
    """`value` for an error message: its repr (cut to `limit` characters) and its type."""
    text = repr(value)
    return f"{text[:limit - 3] + '...' if len(text) > limit else text} ({type(value).__name__})"


def _checked(where: str, name: str, value: Any) -> Any:
    """`value` of field `name` converted by its `_FIELD_TYPES` kind (the last dotted part names the field).

    Raises ValueError "<where>: <name> must be <kind>, got <value> (<type>)" for a value of any other type."""
    what, convert = _KINDS[_FIELD_TYPES[name.rsplit(".", 1)[-1]]]
    try:
        return convert(value)
    except _WrongType:
        raise ValueError(f"{where}: {name} must be {what}, got {_show(value)}") from None


def _read_config_file(path: str) -> Any:
    """The parsed JSON of a config file; ValueError naming the file when it is missing, unreadable or not JSON."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8-sig"))  # a byte-order mark is tolerated
    except FileNotFoundError:
        raise ValueError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ValueError(f"config file {path} is a directory, not a file") from None
    except OSError as e:
        raise ValueError(f"config file {path} cannot be read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"config file {path} is not valid JSON: not UTF-8 text ({e.reason} at byte {e.start})"
                         ) from None
    except json.JSONDecodeError as e:
        raise ValueError(f"config file {path} is not valid JSON: {e}") from None
    except RecursionError:
        raise ValueError(f"config file {path} is not valid JSON: nested too deeply") from None


_PRESETS: dict[str, dict[str, Any]] = {
    "qwen3-0.6b": dict(num_hidden_layers=28, hidden_size=1024, num_attention_heads=16, num_key_value_heads=8,
                       intermediate_size=3072, tie_word_embeddings=True),
    "qwen3-1.7b": dict(num_hidden_layers=28, hidden_size=2048, num_attention_heads=16, num_key_value_heads=8,
                       intermediate_size=6144, tie_word_embeddings=True),
    "qwen3-4b": dict(num_hidden_layers=36, hidden_size=2560, num_attention_heads=32, num_key_value_heads=8,
                     intermediate_size=9728, tie_word_embeddings=True),
    "qwen3-8b": dict(num_hidden_layers=36, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                     intermediate_size=12288, tie_word_embeddings=False),
    "qwen3-14b": dict(num_hidden_layers=40, hidden_size=5120, num_attention_heads=40, num_key_value_heads=8,
                      intermediate_size=17408, tie_word_embeddings=False),
    "qwen3-32b": dict(num_hidden_layers=64, hidden_size=5120, num_attention_heads=64, num_key_value_heads=8,
                      intermediate_size=25600, tie_word_embeddings=False),
    "qwen3-30b-a3b": dict(num_hidden_layers=48, hidden_size=2048, num_attention_heads=32, num_key_value_heads=4,
                          intermediate_size=6144, tie_word_embeddings=False, num_experts=128,
                          num_experts_per_tok=8, moe_intermediate_size=768, norm_topk_prob=True),
    "qwen3-235b-a22b": dict(num_hidden_layers=94, hidden_size=4096, num_attention_heads=64, num_key_value_heads=4,
                            intermediate_size=12288, tie_word_embeddings=False, num_experts=128,
                            num_experts_per_tok=8, moe_intermediate_size=1536, norm_topk_prob=True),
}


_POSITIVE_INT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                        "num_key_value_heads", "head_dim", "max_position_embeddings", "decoder_sparse_step")


def _validated(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Every Qwen3Config field in `values` converted to its `_FIELD_TYPES` kind, then range-checked.

    The one home of Qwen3Config's rules, for the constructor and for config.json alike. Raises ValueError
    "<where>: <field> ..." naming the first bad field."""
    v = {name: _checked(where, name, value) for name, value in values.items()}
    for name in _POSITIVE_INT_FIELDS:
        if v[name] < 1:
            raise ValueError(f"{where}: {name} must be a positive integer, got {v[name]}")
    if v["num_attention_heads"] % v["num_key_value_heads"]:
        raise ValueError(f"{where}: num_attention_heads ({v['num_attention_heads']}) must be divisible by "
                         f"num_key_value_heads ({v['num_key_value_heads']})")
    if v["head_dim"] % 2:
        raise ValueError(f"{where}: head_dim must be even for rotary embeddings, got {v['head_dim']}")
    for name in ("rms_norm_eps", "rope_theta"):
        if not v[name] > 0:
            raise ValueError(f"{where}: {name} must be > 0, got {v[name]}")
    if v["num_experts"] < 0:
        raise ValueError(f"{where}: num_experts must be >= 0, got {v['num_experts']}")
    if v["num_experts"]:
        if not 1 <= v["num_experts_per_tok"] <= v["num_experts"]:
            raise ValueError(f"{where}: num_experts_per_tok must be in [1, num_experts={v['num_experts']}], "
                             f"got {v['num_experts_per_tok']}")
        if v["moe_intermediate_size"] < 1:
            raise ValueError(f"{where}: moe_intermediate_size must be positive for MoE, got "
                             f"{v['moe_intermediate_size']}")
    bad = [i for i in v["mlp_only_layers"] if not 0 <= i < v["num_hidden_layers"]]
    if bad:
        raise ValueError(f"{where}: mlp_only_layers has indices outside [0, {v['num_hidden_layers']}): {bad}")
    return v


@dataclasses.dataclass(frozen=True)
class LayerSegment:
    """A run of consecutive decoder layers of one kind; each segment is one scanned parameter stack."""

    start: int
    count: int
    moe: bool

    @property
    def layers(self) -> range:
        return range(self.start, self.start + self.count)


@dataclasses.dataclass(frozen=True)
class Qwen3Config:
    """Architecture of a Qwen3 (dense) or Qwen3-MoE causal LM.

    A config is MoE iff `num_experts > 0`. Field names follow Hugging Face. Sizes are element counts; `rope_theta`
    is the RoPE base; `rms_norm_eps` is added to the mean square inside every RMSNorm.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        values = _validated({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, "Qwen3Config")
        for name, value in values.items():  # plain Python values: np.int64 and lists become int and tuple
            object.__setattr__(self, name, value)

    # ------------------------------------------------------------------------------------------------ factories
    @classmethod
    def preset(cls, name: str) -> "Qwen3Config":
        """A published Qwen3 size: one of `Qwen3Config.preset_names()` (e.g. "qwen3-8b", "qwen3-30b-a3b")."""
        key = name.lower()
        if key not in _PRESETS:
            raise ValueError(f"unknown Qwen3 preset {name!r}; known: {', '.join(_PRESETS)}")
        return cls(vocab_size=151_936, head_dim=128, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
                   max_position_embeddings=40960, **_PRESETS[key])

    @staticmethod
    def preset_names() -> tuple[str, ...]:
        return tuple(_PRESETS)

    @classmethod
    def from_hf_config(cls, path_or_dict: str | os.PathLike | Mapping[str, Any]) -> "Qwen3Config":
        """Reads a Hugging Face Qwen3/Qwen3-MoE config (a dict, a config.json path, or a directory holding one).

        Both transformers spellings are accepted: `rope_theta` (4.x) and `rope_parameters={"rope_theta": ...}` (5.x);
        `num_experts` and `num_local_experts`. Optional fields take transformers' defaults. Raises ValueError, one
        line naming the file (or "config" for a dict) and the field, for a file that is missing or not a JSON
        object, an unknown `model_type`, a missing required field, an unknown field, a value of the wrong type
        (`_FIELD_TYPES`: "1e-6" is not a number, "false" not a boolean, 64.0 not an integer), a value out of range,
        or a field value this port does not implement (e.g. YaRN rope scaling, sliding-window attention).
        """
        if isinstance(path_or_dict, Mapping):
            return cls._from_hf_dict(path_or_dict, "config")
        if not isinstance(path_or_dict, (str, os.PathLike)):
            raise ValueError(f"a config must be a mapping or a config.json path, got {_show(path_or_dict)}")
        path = os.fspath(path_or_dict)
        if os.path.isdir(path):
            if not os.path.exists(os.path.join(path, "config.json")):
                raise ValueError(f"config file not found: {path} is a directory without a config.json")
            path = os.path.join(path, "config.json")
        return cls._from_hf_dict(_read_config_file(path), path)

    @classmethod
    def _from_hf_dict(cls, raw: Any, where: str) -> "Qwen3Config":
        """The config of the HF dict `raw`; `where` (the file, or "config") starts every error message."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where}: a config must be a JSON object, got {_show(raw)}")
        raw = {name: value for name, value in raw.items() if name not in _IGNORED_HF_FIELDS}
        for name, value in raw.items():
            if name in _FIELD_TYPES and name not in _NESTED_ONLY and value is not None:
                raw[name] = _checked(where, name, value)
        model_type = raw.pop("model_type", None)
        if model_type not in MODEL_TYPES:
            raise ValueError(f"{where}: model_type must be one of {MODEL_TYPES}, got {model_type!r}")
        moe = model_type == "qwen3_moe"
        for name, expected in _FIXED_HF_FIELDS.items():
            if raw.get(name) is not None and raw[name] != expected:
                raise ValueError(f"{where}: {name} must be {expected!r} for Qwen3, got {raw[name]!r}")
            raw.pop(name, None)
        layer_types = raw.pop("layer_types", None)
        if layer_types is not None and any(t != "full_attention" for t in layer_types):
            raise ValueError(f"{where}: layer_types has non 'full_attention' layers; sliding-window layers are "
                             "not part of Qwen3")

        fields: dict[str, Any] = {"rope_theta": cls._rope_theta(raw, where)}
        required = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"]
        if moe:
            required += ["moe_intermediate_size", "num_experts_per_tok"]
            if raw.get("num_local_experts") is not None:
                if raw.get("num_experts") is not None and raw["num_experts"] != raw["num_local_experts"]:
                    raise ValueError(f"{where}: num_experts ({raw['num_experts']}) and num_local_experts "
                                     f"({raw['num_local_experts']}) disagree")
                raw["num_experts"] = raw.pop("num_local_experts")
            raw.pop("num_local_experts", None)
            required.append("num_experts")
        for name in required:
            if raw.get(name) is None:
                raise ValueError(f"{where}: missing required field {name!r} (model_type={model_type})")
            fields[name] = raw.pop(name)
        if moe and fields["num_experts"] < 1:
            raise ValueError(f"{where}: num_experts must be >= 1 for model_type qwen3_moe, got "
                             f"{fields['num_experts']}")

        # Optional fields; absent (or null) ones take the dataclass defaults, which are transformers' defaults.
        optional = ["num_key_value_heads", "head_dim", "rms_norm_eps", "tie_word_embeddings", "max_position_embeddings"]
        if moe:
            optional += ["norm_topk_prob", "decoder_sparse_step", "mlp_only_layers"]
        for name in optional:
            value = raw.pop(name, None)
            if value is not None:
                fields[name] = value
        fields.setdefault("num_key_value_heads", fields["num_attention_heads"])
        if raw:
            raise ValueError(f"{where}: unknown config field(s) for {model_type}: "
                             f"{', '.join(sorted(map(str, raw)))}")
        defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        return cls(**_validated(defaults | fields, where))

    @staticmethod
    def _rope_theta(raw: dict[str, Any], where: str) -> float:
        """Pops the RoPE fields of `raw` and returns the base: `rope_theta`, or the one inside `rope_parameters` /
        `rope_scaling` (they must agree), or transformers' default 10000. Only default RoPE is implemented."""
        thetas = {"rope_theta": raw.pop("rope_theta", None)}
        for name in ("rope_scaling", "rope_parameters"):
            rope = raw.pop(name, None) or {}
            for key in _ROPE_FIELDS:
                if rope.get(key) is not None:
                    rope[key] = _checked(where, f"{name}.{key}", rope[key])
            rope_type = rope.get("rope_type") or rope.get("type") or "default"
            if rope_type != "default":
                raise ValueError(f"{where}: {name} asks for rope type {rope_type!r}; only default RoPE is "
                                 "implemented")
            thetas[f"{name}.rope_theta"] = rope.get("rope_theta")
        thetas = {name: theta for name, theta in thetas.items() if theta is not None}
        if len(set(thetas.values())) > 1:
            raise ValueError(f"{where}: the RoPE bases disagree: "
                             + ", ".join(f"{name}={theta}" for name, theta in thetas.items()))
        return next(iter(thetas.values()), 10_000.0)  # transformers' default when the config names none

    def to_hf_dict(self) -> dict[str, Any]:
        """The transformers-5 `config.json` dict for this architecture (round-trips through `from_hf_config`)."""
        d: dict[str, Any] = {
            "architectures": ["Qwen3MoeForCausalLM" if self.is_moe else "Qwen3ForCausalLM"],
            "model_type": "qwen3_moe" if self.is_moe else "qwen3",
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads, "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim, "rms_norm_eps": self.rms_norm_eps, "hidden_act": "silu",
            "rope_parameters": {"rope_theta": self.rope_theta, "rope_type": "default"},
            "tie_word_embeddings": self.tie_word_embeddings, "max_position_embeddings": self.max_position_embeddings,
        }
        if self.is_moe:
            d.update(num_experts=self.num_experts, num_experts_per_tok=self.num_experts_per_tok,
                     moe_intermediate_size=self.moe_intermediate_size, norm_topk_prob=self.norm_topk_prob,
                     decoder_sparse_step=self.decoder_sparse_step, mlp_only_layers=list(self.mlp_only_layers))
        return d

    # ------------------------------------------------------------------------------------------------ derived
    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def group_size(self) -> int:
        """Query heads per KV head (the GQA group size r)."""
        return self.num_attention_heads // self.num_key_value_heads

    def is_moe_layer(self, layer: int) -> bool:
        """transformers' rule: MoE iff not in mlp_only_layers and (layer + 1) % decoder_sparse_step == 0."""
        return (self.is_moe and layer not in self.mlp_only_layers
                and (layer + 1) % self.decoder_sparse_step == 0)

    def layer_segments(self) -> tuple[LayerSegment, ...]:
        """Maximal runs of consecutive layers of the same kind (dense MLP or MoE), in order.

        Every published Qwen3 / Qwen3-MoE config is a single segment; mixed patterns give one scanned stack per run.
        """
        segments: list[LayerSegment] = []
        for layer in range(self.num_hidden_layers):
            moe = self.is_moe_layer(layer)
            if segments and segments[-1].moe == moe:
                last = segments[-1]
                segments[-1] = LayerSegment(last.start, last.count + 1, moe)
            else:
                segments.append(LayerSegment(layer, 1, moe))
        return tuple(segments)

    def _attention_params(self) -> int:
        h, d = self.hidden_size, self.head_dim
        return (h * self.num_attention_heads * d * 2          # q_proj, o_proj
                + h * self.num_key_value_heads * d * 2         # k_proj, v_proj
                + 2 * d                                        # q_norm, k_norm
                + 2 * h)                                       # input / post-attention RMSNorm

    def _mlp_params(self, layer: int, experts: int) -> int:
        h = self.hidden_size
        if self.is_moe_layer(layer):
            return h * self.num_experts + 3 * experts * h * self.moe_intermediate_size  # router + experts
        return 3 * h * self.intermediate_size

    def _count(self, experts: int) -> int:
        h, v = self.hidden_size, self.vocab_size
        total = v * h + h + (0 if self.tie_word_embeddings else h * v)  # embedding, final norm, lm_head
        for layer in range(self.num_hidden_layers):
            total += self._attention_params() + self._mlp_params(layer, experts)
        return total

    def num_params(self) -> int:
        """Unique stored parameters (a tied lm_head is counted once, with the embedding)."""
        return self._count(self.num_experts)

    def num_active_params(self) -> int:
        """Parameters touched per token: for MoE, only `num_experts_per_tok` experts (plus the router) per layer."""
        return self._count(self.num_experts_per_tok)

    def kv_bytes_per_token(self, dtype: Any = "bfloat16") -> int:
        """Bytes of K and V cached per token over all layers: 2 * layers * kv_heads * head_dim * itemsize."""
        itemsize = np.dtype(dtype).itemsize
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * itemsize

