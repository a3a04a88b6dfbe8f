"""Training the embedded tiny Qwen3 family on the pointer-chasing task (task.py): resumable to the bit.

    state = TrainState.create(FAMILY["tiny-s"], TrainConfig())
    for _ in range(100):
        state, loss = train_step(state, *task.training_batch(config.data_seed, state.step, config.batch))

A run checkpoints {params, optimizer state, step} with orbax; since batch s is a pure function of (data_seed, s),
the step is also the data position, and a run resumed from a checkpoint computes exactly what an uninterrupted
one would.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

try:
    from orbax.checkpoint import v1 as ocp
except ImportError:  # pragma: no cover - depends on the installed orbax
    from orbax.checkpoint.experimental import v1 as ocp

from kinetics_jax.config import Qwen3Config
from kinetics_jax.model import Qwen3ForCausalLM
from kinetics_jax.sampling import SamplingConfig, generate
from kinetics_jax.tiny import task


def _config(hidden: int, layers: int, heads: int, kv_heads: int) -> Qwen3Config:
    return Qwen3Config(vocab_size=len(task.VOCAB), hidden_size=hidden, intermediate_size=3 * hidden,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                       head_dim=32, rope_theta=10_000.0, tie_word_embeddings=True, max_position_embeddings=512)


FAMILY: dict[str, Qwen3Config] = {
    "tiny-s": _config(hidden=64, layers=2, heads=2, kv_heads=1),
    "tiny-m": _config(hidden=96, layers=4, heads=4, kv_heads=2),
    "tiny-l": _config(hidden=128, layers=6, heads=4, kv_heads=2),
}
"""The family: about 0.1M, 0.5M and 1.2M parameters; head_dim 32 (Qwen3's per-head q/k RMSNorm caps a head's
logits near sqrt(head_dim); at 16 the lookup circuit had not formed after 1000 steps of a run where it formed by
step 700 at 32), GQA group 2, tied embeddings."""

PEAK_LR: dict[str, float] = {"tiny-s": 3e-3, "tiny-m": 2e-3, "tiny-l": 3e-3}
"""The peak learning rate each model is trained with. At 3e-3 tiny-m never formed the lookup circuit in 2000
steps (final loss 0.40, greedy accuracy 0 of 64); at 2e-3 it formed by step 550."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """AdamW with linear warm-up then cosine decay to lr / 10. Batches come from task.training_batch."""

    steps: int = 2000
    batch: int = 16
    lr: float = 3e-3
    warmup: int = 200
    weight_decay: float = 0.01
    clip: float = 1.0
    seed: int = 0        # parameter init
    data_seed: int = 0   # the training problems (evaluation uses other seeds)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch < 1 or not self.lr > 0 or not 0 <= self.warmup < self.steps:
            raise ValueError(f"TrainConfig needs steps >= 1, batch >= 1, lr > 0 and 0 <= warmup < steps: {self}")

    def optimizer(self) -> optax.GradientTransformation:
        schedule = optax.warmup_cosine_decay_schedule(0.0, self.lr, self.warmup, self.steps, self.lr / 10)
        return optax.chain(optax.clip_by_global_norm(self.clip),
                           optax.adamw(schedule, weight_decay=self.weight_decay))


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """params: the model's nnx.State; opt_state: optax state; step: int32 scalar (next step = data position)."""

    params: nnx.State
    opt_state: optax.OptState
    step: jax.Array
    graphdef: nnx.GraphDef = dataclasses.field(metadata=dict(static=True))
    optimizer: optax.GradientTransformation = dataclasses.field(metadata=dict(static=True))

    @classmethod
    def create(cls, config: Qwen3Config, train: TrainConfig) -> "TrainState":
        model = Qwen3ForCausalLM(config, rngs=nnx.Rngs(train.seed))
        graphdef, params = nnx.split(model)
        optimizer = train.optimizer()
        return cls(params, optimizer.init(params), jnp.int32(0), graphdef, optimizer)

    def model(self) -> Qwen3ForCausalLM:
        return nnx.merge(self.graphdef, self.params)


def loss_fn(params: nnx.State, graphdef: nnx.GraphDef, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean next-token cross entropy (nats) over the masked positions. tokens int32[B, T], mask float32[B, T]."""
    logits = nnx.merge(graphdef, params)(tokens[:, :-1])
    logp = jax.nn.log_softmax(logits, axis=-1)
    target = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    weights = mask[:, :-1]
    return -jnp.sum(target * weights) / jnp.maximum(jnp.sum(weights), 1.0)


@jax.jit
def train_step(state: TrainState, tokens: jax.Array, mask: jax.Array) -> tuple[TrainState, jax.Array]:
    """One AdamW step on a batch. Returns (new state, loss before the update)."""
    loss, grads = jax.value_and_grad(loss_fn)(state.params, state.graphdef, tokens, mask)
    updates, opt_state = state.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return dataclasses.replace(state, params=params, opt_state=opt_state, step=state.step + 1), loss


def _arrays(state: TrainState) -> dict:
    return {"params": state.params, "opt_state": state.opt_state, "step": state.step}


def save_state(state: TrainState, directory: str) -> None:
    """Writes the state to `directory`/step_<n> (atomically: orbax writes a temporary directory and renames it),
    then deletes older step directories."""
    step = int(state.step)
    path = os.path.join(os.path.abspath(directory), f"step_{step:06d}")
    if not os.path.exists(path):
        ocp.save(path, _arrays(state))
    for name in os.listdir(directory):
        if name.startswith("step_") and name != os.path.basename(path) and name[5:].isdigit():
            shutil.rmtree(os.path.join(directory, name))


def latest_step(directory: str) -> str | None:
    """The newest finished step directory in `directory` (orbax's temporary directories are ignored)."""
    if not os.path.isdir(directory):
        return None
    steps = sorted(n for n in os.listdir(directory) if n.startswith("step_") and n[5:].isdigit())
    return os.path.join(os.path.abspath(directory), steps[-1]) if steps else None


def restore_state(template: TrainState, path: str) -> TrainState:
    """The state saved at `path`, with the structure (and graph, optimizer) of `template`."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.asarray(x).dtype, sharding=device),
                            _arrays(template))
    loaded = ocp.load(path, abstract)
    return dataclasses.replace(template, params=loaded["params"], opt_state=loaded["opt_state"],
                               step=loaded["step"])


def greedy_accuracy(model: Qwen3ForCausalLM, problems: list[task.Problem]) -> float:
    """Fraction of `problems` the model answers correctly with greedy decoding (the whole chain, dense)."""
    prompts = [task.encode(p.prompt()) for p in problems]
    result = generate(model, prompts, max_new_tokens=task.MAX_TOKENS - task.PROMPT_TOKENS,
                      sampling=SamplingConfig.greedy_config(), eos_token_ids=[task.TOKEN_ID[task.EOS]])
    return float(np.mean([task.check(task.decode(result.sequences(i, 0)), p) for i, p in enumerate(problems)]))
