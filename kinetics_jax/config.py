"""Qwen3 / Qwen3-MoE model configuration.

`Qwen3Config` is a frozen dataclass holding exactly the architecture numbers the port needs. It is built from a
Hugging Face `config.json` (transformers 4.x or 5.x spelling) with `Qwen3Config.from_hf_config`, or from a named
size with `Qwen3Config.preset`. Derived numbers (parameter counts, KV-cache bytes per token, the dense/MoE layer
pattern) are methods, never stored fields, so they cannot disagree with the architecture.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

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
        object.__setattr__(self, "mlp_only_layers", tuple(int(i) for i in self.mlp_only_layers))
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "max_position_embeddings", "decoder_sparse_step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"Qwen3Config.{name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"Qwen3Config.num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise ValueError(f"Qwen3Config.head_dim must be even for rotary embeddings, got {self.head_dim}")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"Qwen3Config.rms_norm_eps must be > 0, got {self.rms_norm_eps}")
        if not self.rope_theta > 0:
            raise ValueError(f"Qwen3Config.rope_theta must be > 0, got {self.rope_theta}")
        if self.num_experts < 0:
            raise ValueError(f"Qwen3Config.num_experts must be >= 0, got {self.num_experts}")
        if self.num_experts:
            if not 1 <= self.num_experts_per_tok <= self.num_experts:
                raise ValueError(f"Qwen3Config.num_experts_per_tok must be in [1, num_experts={self.num_experts}], "
                                 f"got {self.num_experts_per_tok}")
            if self.moe_intermediate_size < 1:
                raise ValueError(
                    f"Qwen3Config.moe_intermediate_size must be positive for MoE, got {self.moe_intermediate_size}")
        bad = [i for i in self.mlp_only_layers if not 0 <= i < self.num_hidden_layers]
        if bad:
            raise ValueError(f"Qwen3Config.mlp_only_layers has indices outside [0, {self.num_hidden_layers}): {bad}")

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
        `num_experts` and `num_local_experts`. Optional fields take transformers' defaults. Raises ValueError naming
        the field for an unknown `model_type`, a missing required field, an unknown field, or a field value this
        port does not implement (e.g. YaRN rope scaling, sliding-window attention).
        """
        if isinstance(path_or_dict, Mapping):
            raw = dict(path_or_dict)
        else:
            path = os.fspath(path_or_dict)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            try:
                with open(path) as f:
                    raw = json.load(f)
            except FileNotFoundError:
                raise ValueError(f"config file not found: {path}") from None
            except json.JSONDecodeError as e:
                raise ValueError(f"config file {path} is not valid JSON: {e}") from None
        return cls._from_hf_dict(raw)

    @classmethod
    def _from_hf_dict(cls, raw: dict[str, Any]) -> "Qwen3Config":
        raw = dict(raw)
        model_type = raw.pop("model_type", None)
        if model_type not in MODEL_TYPES:
            raise ValueError(f"config field 'model_type' must be one of {MODEL_TYPES}, got {model_type!r}")
        moe = model_type == "qwen3_moe"
        for name in _IGNORED_HF_FIELDS:
            raw.pop(name, None)
        for name, expected in _FIXED_HF_FIELDS.items():
            if name in raw and raw.pop(name) != expected:
                raise ValueError(f"config field {name!r} must be {expected!r} for Qwen3")
        layer_types = raw.pop("layer_types", None)
        if layer_types is not None and any(t != "full_attention" for t in layer_types):
            raise ValueError("config field 'layer_types' has non 'full_attention' layers; sliding-window layers are "
                             "not part of Qwen3")

        fields: dict[str, Any] = {}
        rope_scaling = raw.pop("rope_scaling", None)
        rope_parameters = raw.pop("rope_parameters", None)
        for rope in (rope_scaling, rope_parameters):
            if rope is not None and rope.get("rope_type", rope.get("type", "default")) != "default":
                raise ValueError(f"config field 'rope_scaling'/'rope_parameters' asks for rope type "
                                 f"{rope.get('rope_type', rope.get('type'))!r}; only default RoPE is implemented")
        if "rope_theta" in raw:
            fields["rope_theta"] = float(raw.pop("rope_theta"))
        elif rope_parameters is not None and "rope_theta" in rope_parameters:
            fields["rope_theta"] = float(rope_parameters["rope_theta"])
        else:
            fields["rope_theta"] = 10_000.0  # transformers' default when the config names none

        required = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"]
        if moe:
            required += ["moe_intermediate_size", "num_experts_per_tok"]
            if "num_local_experts" in raw:
                if "num_experts" in raw and raw["num_experts"] != raw["num_local_experts"]:
                    raise ValueError("config fields 'num_experts' and 'num_local_experts' disagree")
                raw["num_experts"] = raw.pop("num_local_experts")
            required.append("num_experts")
        for name in required:
            if name not in raw:
                raise ValueError(f"config is missing required field {name!r} (model_type={model_type})")
            fields[name] = raw.pop(name)

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
            raise ValueError(f"unknown config field(s) for {model_type}: {', '.join(sorted(raw))}")
        return cls(**fields)

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

