"""Block scores from page summaries (block top-k selection): XLA gathers off TPU, a Mosaic DMA kernel on TPU.

Modules: reference (jnp spec and the XLA implementation), mosaic_tpu (kernel), ops (implementation choice).
"""

from pallas_kernels.page_scores.ops import IMPLEMENTATIONS, scores

__all__ = ["IMPLEMENTATIONS", "scores"]
