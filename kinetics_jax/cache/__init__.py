"""The paged KV cache: its layout (`PagedLayout`: page size, offset, KV head copies, summaries, logical axes), a
request's host-side page plan (`CachePlan`) and the device pools (`KVCache`).

    layout = PagedLayout.of(attention)                    # from an AttentionConfig
    plan = layout.plan(prompt_lengths, num_samples, max_new_tokens)
    cache = layout.zeros(model_config, plan.num_pages, dtype)
"""

from kinetics_jax.cache.layout import PagedLayout
from kinetics_jax.cache.plan import CachePlan
from kinetics_jax.cache.pools import NULL_PAGE, SUMMARY_FIELDS, KVCache, page_summaries

__all__ = ["NULL_PAGE", "SUMMARY_FIELDS", "CachePlan", "KVCache", "PagedLayout", "page_summaries"]
