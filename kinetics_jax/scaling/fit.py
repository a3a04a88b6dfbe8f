"""A scaling law of accuracy against log cost, fitted with optax.

    acc(c) = a * sigmoid((log10 c - b) / s),   0 < a <= 1, s > 0

a is the accuracy the model saturates at, b the log10 budget (FLOPs or eFLOPs per query) at which it reaches a / 2,
s the width of the rise in decades. Why this form: under the Kinetics rule a model's accuracy is 0 below the price
of its cheapest configuration, rises as the budget affords more trials or longer chains, and saturates at its best
configuration's accuracy; on a log-cost axis the measured curves are S-shaped, and the sigmoid has exactly those
three properties with one parameter each.

Fitting: x = log10 c is standardised (z = (x - mean) / std) so one learning rate suits every cost scale; the
parameters are unconstrained (a = sigmoid(a'), s = softplus(s') + 1e-3 in z units, b in z units) and fitted by
Adam on the mean squared error, with a cosine-decayed learning rate, a fixed number of steps, all in one jit
(jax and optax are imported on the first fit, not with the module).
Initialisation: a at the largest observed accuracy, b where the data first reach half of it, s a quarter of the
standardised range. Quality: R^2 = 1 - SS_res / SS_tot (NaN for constant data) and RMSE, on the fitted points.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Callable

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    import jax

_MIN_WIDTH = 1e-3  # in standardised units: keeps the sigmoid's width away from 0


def sigmoid_law(cost: ArrayLike, a: float, b: float, s: float) -> np.ndarray:
    """a * sigmoid((log10 cost - b) / s) (cost > 0, any shape)."""
    x = np.log10(np.asarray(cost, np.float64))
    return a / (1.0 + np.exp(-(x - b) / s))


@dataclasses.dataclass(frozen=True)
class SigmoidFit:
    """Fitted acc(c) = a * sigmoid((log10 c - b) / s) and its quality on the `num_points` fitted points."""

    a: float
    b: float
    s: float
    r2: float
    rmse: float
    num_points: int

    def predict(self, cost: ArrayLike) -> np.ndarray:
        """Accuracy the law predicts at budgets `cost` (> 0)."""
        return sigmoid_law(cost, self.a, self.b, self.s)


@functools.cache
def _adam() -> Callable[..., dict[str, "jax.Array"]]:
    """The jitted Adam fit: (init, z, y, steps, learning_rate) -> fitted parameters. Built on the first fit, so
    jax and optax are imported only when a law is fitted (kinetics_jax.scaling itself imports without them)."""
    import jax
    import jax.numpy as jnp
    import optax

    def law(params: dict[str, jax.Array], z: jax.Array) -> jax.Array:
        width = jax.nn.softplus(params["s"]) + _MIN_WIDTH
        return jax.nn.sigmoid(params["a"]) * jax.nn.sigmoid((z - params["b"]) / width)

    def adam(init: dict[str, jax.Array], z: jax.Array, y: jax.Array, steps: int,
             learning_rate: float) -> dict[str, jax.Array]:
        optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))

        def loss(params: dict[str, jax.Array]) -> jax.Array:
            return jnp.mean((law(params, z) - y) ** 2)

        def step(_, carry):
            params, state = carry
            updates, state = optimizer.update(jax.grad(loss)(params), state, params)
            return optax.apply_updates(params, updates), state

        params, _ = jax.lax.fori_loop(0, steps, step, (init, optimizer.init(init)))
        return params

    return jax.jit(adam, static_argnames="steps")


def fit_sigmoid(cost: ArrayLike, accuracy: ArrayLike, *, steps: int = 3000,
                learning_rate: float = 0.2) -> SigmoidFit:
    """Fits the law to points (cost[i] > 0, accuracy[i] in [0, 1]); at least 3 points with distinct costs."""
    import jax  # on first use only (see `_adam`)
    import jax.numpy as jnp

    cost = np.asarray(cost, np.float64).ravel()
    y = np.asarray(accuracy, np.float64).ravel()
    if cost.shape != y.shape or cost.size < 3 or not np.all(cost > 0) or np.ptp(cost) == 0:
        raise ValueError(f"fit_sigmoid needs >= 3 points, costs > 0 and not all equal; got {cost.size} costs "
                         f"and {y.size} accuracies")
    x = np.log10(cost)
    mean, std = x.mean(), x.std()
    z = (x - mean) / std
    top = float(np.clip(y.max(), 0.02, 0.98))
    half = int(np.argmax(y >= y.max() / 2)) if y.max() > 0 else z.size // 2
    width = np.ptp(z) / 4
    init = {"a": np.log(top / (1 - top)), "b": z[half], "s": np.log(np.expm1(width))}
    params = _adam()({k: jnp.asarray(v, jnp.float32) for k, v in init.items()}, jnp.asarray(z, jnp.float32),
                     jnp.asarray(y, jnp.float32), steps, learning_rate)
    a = float(jax.nn.sigmoid(params["a"]))
    b = float(mean + std * params["b"])
    s = float(std * (jax.nn.softplus(params["s"]) + _MIN_WIDTH))
    residual = y - sigmoid_law(10.0 ** x, a, b, s)
    ss_res, ss_tot = float(np.sum(residual ** 2)), float(np.sum((y - y.mean()) ** 2))
    return SigmoidFit(a=a, b=b, s=s, r2=1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
                      rmse=float(np.sqrt(np.mean(residual ** 2))), num_points=int(x.size))
