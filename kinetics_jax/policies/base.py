"""The decode-attention policy protocol, the registry of policies and the one label grammar.

A policy is a frozen dataclass that says which cached KV tokens a decode step attends (docs/policies.md). Its
module holds everything about it, and nothing outside `kinetics_jax.policies` compares its kind:

- its fields and their validation (`__post_init__` through `checked_int`);
- `keep_mask`: the token-level specification over contiguous K/V (pure JAX, the tests' reference);
- `decode`: the engine's sparse step over the paged cache (the page list it asks for, read by a kernel);
- `attended` / `candidate_blocks` / `active`: per-step counts, one formula for numpy (the cost model) and
  jax.numpy (the engine), chosen by the `xp` argument;
- the page layout it needs (`page_size`, `page_offset`), the page summaries the cache keeps for it and their
  scoring FLOPs;
- `label()` and `parse_policy(label)`, one grammar for scripts, records, tables and benchmarks:

      <kind>[-<tokens>][:<field>=<value>,...]     e.g.  dense   block_topk-64   block_topk-64:score=quest,sink=8

  `tokens` is the budget a policy names itself by (topk: tokens chosen; block_topk: tokens in the chosen
  blocks; sliding_window: the local window); the fields after ":" are the ones that differ from their defaults.

Adding a policy is one module: subclass `Policy`, decorate with `@register`, import it in `policies/__init__.py`.
jax is imported inside the jax methods only, so the cost model and the scaling analysis import without it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import numpy as np

from kinetics_jax.checks import checked_int

if TYPE_CHECKING:
    import jax

    from kinetics_jax.attention.dispatch import LayerStep

REGISTRY: dict[str, type["Policy"]] = {}


def register(cls: type["Policy"]) -> type["Policy"]:
    """Class decorator: makes `cls` known to `parse_policy` and `policy_from_fields` under `cls.kind`."""
    if cls.kind in REGISTRY:
        raise ValueError(f"attention policy kind {cls.kind!r} is registered twice")
    REGISTRY[cls.kind] = cls
    return cls


@dataclasses.dataclass(frozen=True, kw_only=True)
class Policy:
    """Base of the decode-attention policies (see the module doc). Subclasses set the class variables and
    implement `attended`, `keep_mask` and (sparse ones) `decode`."""

    kind: ClassVar[str]
    sparse: ClassVar[bool] = True
    summaries: ClassVar[tuple[str, ...]] = ()  # per-page key summaries the cache keeps (KVCache fields)
    scoring_flops: ClassVar[int] = 0  # FLOPs per scored block and per KV-head channel (Hkv x head_dim)
    budget_field: ClassVar[str | None] = None  # the field the label's <tokens> sets
    skip_when_inactive: ClassVar[bool] = True  # read densely while no sequence is past the threshold
    backends: ClassVar[tuple[str, ...]] = ("xla", "pallas")  # the implementations it has
    # Integer fields and their lower bounds, checked by the package's one integer rule (checks.checked_int),
    # and why a bound is what it is (added to the message).
    int_fields: ClassVar[Mapping[str, int]] = {}
    why: ClassVar[Mapping[str, str]] = {}

    def __post_init__(self) -> None:
        for name, minimum in self.int_fields.items():
            object.__setattr__(self, name, checked_int(getattr(self, name), f"{type(self).__name__}.{name}",
                                                       minimum=minimum, why=self.why.get(name)))

    def error(self, name: str, why: str) -> ValueError:
        return ValueError(f"{type(self).__name__}.{name}: {why} (got {getattr(self, name)!r})")

    # ------------------------------------------------------------------------------------ counts
    @property
    def budget(self) -> int | None:
        """KV tokens a sparse layer attends per step once the policy is active (None: every token)."""
        return None

    def attended(self, n: Any, xp: Any = np) -> Any:
        """KV tokens one sparse layer attends at a decode step with n cached tokens (the current one included);
        n an integer array of numpy (xp=np) or jax.numpy (xp=jnp)."""
        raise NotImplementedError

    def candidate_blocks(self, n: Any, xp: Any = np) -> Any:
        """Blocks the policy scores at context n once active (0 for policies that score no blocks)."""
        return xp.zeros_like(n)

    def active(self, n: Any, xp: Any = np) -> Any:
        """bool array: the policy drops some of the n cached tokens (below its threshold it attends them all)."""
        return self.attended(n, xp) < n

    def prompt_blocks(self, prompt_len: int, page_size: int) -> int:
        """Candidate blocks that are a prompt's own full pages (scored from one read for all its samples)."""
        return 0

    # ------------------------------------------------------------------------------------ layout
    @property
    def page_size(self) -> int | None:
        """The cache page size the policy requires (None: any)."""
        return None

    def page_offset(self, page_size: int) -> int:
        """Empty slots before token 0 in a sequence's first cache page."""
        return 0

    def check_backend(self, backend: str) -> None:
        """Raises if the policy has no implementation for `backend` ("xla" | "pallas")."""
        if backend not in self.backends:
            raise ValueError(f"AttentionConfig.backend: {self.kind} has no {backend!r} implementation (it has "
                             f"{', '.join(self.backends)}) (got {backend!r})")

    # ------------------------------------------------------------------------------------ jax
    def keep_mask(self, q: "jax.Array", k: "jax.Array", lengths: "jax.Array") -> "jax.Array":
        """bool[B, Hkv, T]: the tokens each KV head attends; the specification over contiguous KV.
        q [B, Hq, D] (rotated), k [B, T, Hkv, D], lengths int32[B]."""
        raise NotImplementedError

    def decode(self, q: "jax.Array", step: "LayerStep") -> tuple["jax.Array", "jax.Array"]:
        """One sparse decode step over the paged cache: (out [B, Hq, D], KV tokens attended int32[B])."""
        raise NotImplementedError(f"{type(self).__name__} is not sparse")

    # ------------------------------------------------------------------------------------ labels
    @property
    def tokens(self) -> int | None:
        """The budget the label names the policy by (None: the label has no <tokens>)."""
        return None if self.budget_field is None else getattr(self, self.budget_field)

    @classmethod
    def from_tokens(cls, tokens: int, fields: dict[str, Any]) -> "Policy":
        """The policy of a label's <tokens> and its other fields."""
        return cls(**{cls.budget_field: tokens}, **fields)

    def label(self) -> str:
        """The policy in the label grammar (module doc): kind, tokens, and the fields off their defaults."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        extra = [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                 if f.name != self.budget_field and getattr(self, f.name) != defaults[f.name]]
        head = self.kind if self.tokens is None else f"{self.kind}-{self.tokens}"
        return head + (":" + ",".join(extra) if extra else "")

    def to_fields(self) -> dict[str, Any]:
        """{"kind": ..., field: value, ...}: the JSON form records keep (`policy_from_fields` reads it)."""
        return {"kind": self.kind, **dataclasses.asdict(self)}


def parse_policy(label: str) -> Policy:
    """The policy a label names (the grammar of the module doc); ValueError naming the problem otherwise."""
    head, _, rest = label.strip().partition(":")
    kind, dash, tokens = head.partition("-")
    kinds = ", ".join(REGISTRY)
    if kind not in REGISTRY:
        raise ValueError(f"unknown attention policy {label!r}: the kind must be one of {kinds} "
                         f"(labels look like dense, block_topk-64, block_topk-64:score=quest)")
    cls = REGISTRY[kind]
    names = {f.name: f for f in dataclasses.fields(cls)}
    fields: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        name, eq, value = item.partition("=")
        name = name.strip()
        if not eq or name not in names or name == cls.budget_field:
            allowed = ", ".join(n for n in names if n != cls.budget_field) or "none"
            raise ValueError(f"attention policy {label!r}: {item!r} is not <field>=<value> with a field of "
                             f"{kind} ({allowed})")
        fields[name] = _value(value.strip(), names[name].default, label, name)
    if cls.budget_field is None:
        if dash:
            raise ValueError(f"attention policy {label!r}: {kind} takes no budget")
        return cls(**fields)
    if not tokens.isdigit() or int(tokens) < 1:
        raise ValueError(f"attention policy {label!r}: expected {kind}-<tokens> with tokens >= 1")
    return cls.from_tokens(int(tokens), fields)


def _value(text: str, default: Any, label: str, name: str) -> Any:
    if isinstance(default, str):
        return text
    if text.lstrip("-").isdigit():
        return int(text)
    raise ValueError(f"attention policy {label!r}: {name}={text!r} is not an integer")


def policy_from_fields(fields: Mapping[str, Any]) -> Policy:
    """The policy of a record's {"kind": ..., field: value} (`Policy.to_fields`); keys the kind does not have
    are ignored when they are None or are a field of another policy (records written by older versions list
    every policy's fields)."""
    kind = fields.get("kind", "dense")
    if kind not in REGISTRY:
        raise ValueError(f"unknown attention policy kind {kind!r} (known: {', '.join(REGISTRY)})")
    cls = REGISTRY[kind]
    own = {f.name for f in dataclasses.fields(cls)}
    others = {f.name for c in REGISTRY.values() for f in dataclasses.fields(c)} | _CONFIG_KEYS
    strange = [k for k in fields if k != "kind" and k not in own and k not in others]
    if strange:
        raise ValueError(f"attention policy {kind}: unknown field(s) {', '.join(strange)}")
    return cls(**{k: v for k, v in fields.items() if k in own and v is not None})


# Keys of an AttentionConfig's record form that are not policy fields (config.py owns them).
_CONFIG_KEYS = {"dense_layers", "backend", "page_size", "tile_tokens"}
