"""The continuous-batching scheduler on the host, with simulated decode chunks: every sequence finishes at its own
length, pages are never shared except a prompt's, the pool is never exceeded and is empty at the end, a short
pool preempts (and the oldest sequence always progresses), and a pool that cannot hold one sequence is named."""

from __future__ import annotations

import numpy as np
import pytest

from kinetics_jax.cache import NULL_PAGE, PagedLayout
from kinetics_jax.sampling.scheduler import Scheduler
from kinetics_jax.sampling.stops import EOS, LENGTH, RUNNING


def _simulate(layout, lengths, targets, num_pages, max_num_seqs, chunk, max_new=64, shards=1, skip=(),
              share_width=3, share_from=2):
    """Runs the scheduler with chunks that stop sample (p, s) after targets[p, s] tokens; checks the invariants
    of every chunk plan (in each data shard). Returns the scheduler."""
    num_samples = targets.shape[1]
    scheduler = Scheduler(layout, lengths, num_samples, max_new, num_pages=num_pages, max_num_seqs=max_num_seqs,
                          chunk=chunk, streams=np.arange(len(lengths)), width=64, eos_token_ids=(),
                          shards=shards, skip=skip, share_width=share_width,
                          share_from=share_from)
    per = max_num_seqs // shards
    for _ in range(10_000):
        if scheduler.finished:
            return scheduler
        for job in scheduler.schedule():
            dst, block, full = job.writes
            assert list(block) == list(range(len(dst))) and full.sum() == (lengths[job.prompt] +
                                                                           layout.page_offset) // layout.page_size
            scheduler.set_logits(job, None)
        for draw in scheduler.first_token_draws():
            assert len(draw.samples) <= max_num_seqs
            scheduler.fill_first_tokens(draw, np.full(len(draw.samples), 5, np.int32))
        plan = scheduler.chunk_plan()
        assert all(shard.pool.used <= num_pages - 1 for shard in scheduler.shards)
        rows = [i for i in range(max_num_seqs) if plan.active[i]]
        owned: dict[tuple[int, int], int] = {}
        for i in rows:
            shard, slot = scheduler.shards[i // per], i % per
            p = next(p for p, entry in shard.prompts.items() if entry.full == list(
                plan.page_table[i, :len(entry.full)]) and shard.slots[slot].prompt == p)
            own = plan.page_table[i, len(shard.prompts[p].full):]
            own = own[own != NULL_PAGE]
            for page in own:  # a sample's own pages are its alone
                assert owned.setdefault((shard.index, int(page)), i) == i
            # pages cover the chunk's positions
            last = plan.positions[i] + min(chunk, max_new - plan.generated[i]) - 1
            assert plan.page_table[i, (last + layout.page_offset) // layout.page_size] != NULL_PAGE
        assert not plan.active[[i for i in range(max_num_seqs) if i not in rows]].any()
        _check_groups(scheduler, plan, rows, per, share_width, share_from)
        tokens = np.full((max_num_seqs, chunk), -1, np.int32)
        generated, reasons = plan.generated.copy(), np.full(max_num_seqs, RUNNING, np.int32)
        for i in rows:
            seq = scheduler.shards[i // per].slots[i % per]
            for k in range(chunk):
                tokens[i, k] = 3
                generated[i] += 1
                if generated[i] >= targets[seq.prompt, seq.sample]:
                    reasons[i] = LENGTH
                    break
        if rows:
            scheduler.record(tokens, generated, reasons)
    raise AssertionError(f"no end after 10,000 chunks: {scheduler.stats}")


def _check_groups(scheduler, plan, rows, per, share_width, share_from):
    """The rows' shared-prompt groups: a row's leader is the first running row of its shard holding the same
    prompt and sample group, each place of a group is taken once, and `shared` is the prompt's full pages (0
    below share_from of them)."""
    places = set()
    for i in rows:
        shard = scheduler.shards[i // per]
        seq = shard.slots[i % per]
        key = seq.prompt, seq.sample // share_width
        first = min(j for j in rows if j // per == i // per and (shard.slots[j % per].prompt,
                                                                   shard.slots[j % per].sample // share_width) == key)
        assert plan.leader[i] == first % per and plan.place[i] == seq.sample % share_width
        full = len(shard.prompts[seq.prompt].full)
        assert plan.shared[i] == (full if full >= share_from else 0)
        assert (i // per, plan.leader[i], plan.place[i]) not in places
        places.add((i // per, plan.leader[i], plan.place[i]))


@pytest.mark.parametrize("page_offset", [0, 5])
@pytest.mark.parametrize("num_pages", [200, 24, 11])
def test_every_sequence_ends_at_its_length_and_the_pool_empties(num_pages, page_offset):
    rng = np.random.default_rng(num_pages + page_offset)
    lengths = [5, 23, 40, 70, 16]
    targets = rng.integers(2, 65, (len(lengths), 3))
    scheduler = _simulate(PagedLayout(16, page_offset), lengths, targets, num_pages, max_num_seqs=4, chunk=8)
    assert scheduler.shards[0].pool.used == 0 and not scheduler.shards[0].prompts
    for (p, s), (tokens, reason) in scheduler.results.items():
        assert len(tokens) == targets[p, s] and reason == LENGTH
    assert len(scheduler.results) == targets.size
    assert scheduler.stats.peak_pages <= num_pages - 1
    if num_pages == 200:
        assert scheduler.stats.preemptions == 0 and scheduler.stats.prefills == len(lengths)


def test_data_shards_split_the_prompts_and_skipped_samples_never_run():
    """Two data shards of 3 slots: each prompt's samples all run in one shard (its pages are there), both shards
    work, every pool empties; the skipped (prompt, sample) pairs are neither run nor reported."""
    rng = np.random.default_rng(3)
    lengths = [5, 23, 40, 70, 16, 9]
    targets = rng.integers(2, 65, (len(lengths), 3))
    skip = {(0, 1), (2, 0), (2, 1), (2, 2), (5, 2)}
    scheduler = _simulate(PagedLayout(16), lengths, targets, 40, max_num_seqs=6, chunk=8, shards=2, skip=skip)
    assert set(scheduler.results) == {(p, s) for p in range(6) for s in range(3)} - skip
    for (p, s), (tokens, _) in scheduler.results.items():
        assert len(tokens) == targets[p, s]
    assert all(shard.pool.used == 0 and not shard.prompts and shard.admitted > 0 for shard in scheduler.shards)
    assert scheduler.stats.prefills == 5  # prompt 2 is skipped whole; nothing was evicted
    assert len(scheduler.take_finished()) == len(scheduler.results) and scheduler.take_finished() == []


def test_a_short_pool_preempts_the_newest_and_still_ends():
    """Two samples of a 20-token prompt fit at first but not at 64 tokens each (2 prompt pages + 2 x 5 own pages
    > 11): the newer is preempted, recomputed later, and both end."""
    targets = np.full((1, 3), 64)
    scheduler = _simulate(PagedLayout(16), [20], targets, num_pages=12, max_num_seqs=3, chunk=8)
    assert scheduler.stats.preemptions > 0 and scheduler.stats.recomputed_tokens > 0
    assert all(len(tokens) == 64 for tokens, _ in scheduler.results.values()) and scheduler.shards[0].pool.used == 0


def test_samples_share_their_prompt_pages():
    layout = PagedLayout(16)
    scheduler = Scheduler(layout, [40], 4, 30, num_pages=100, max_num_seqs=4, chunk=8, streams=np.arange(1),
                          width=8, eos_token_ids=())
    jobs = scheduler.schedule()
    assert len(jobs) == 1  # one prefill for the 4 samples
    scheduler.set_logits(jobs[0], "logits")
    (draw,) = scheduler.first_token_draws()
    assert draw.logits == "logits" and draw.samples == [0, 1, 2, 3]
    scheduler.fill_first_tokens(draw, np.arange(4, dtype=np.int32))
    plan = scheduler.chunk_plan()
    assert plan.active.all() and (plan.page_table[:, :2] == plan.page_table[0, :2]).all()  # 2 full pages shared
    assert len(set(plan.page_table[:, 2])) == 4  # the partial page: each sample its own copy of the tail
    assert (plan.copy_from == scheduler.shards[0].prompts[0].tail).all() and (plan.copy_to == plan.page_table[:, 2]).all()
    assert plan.tokens.tolist() == [0, 1, 2, 3] and (plan.positions == 40).all() and (plan.generated == 1).all()


def test_a_first_token_that_ends_the_sample_needs_no_chunk():
    scheduler = Scheduler(PagedLayout(16), [10], 2, 30, num_pages=100, max_num_seqs=2, chunk=8,
                          streams=np.arange(1), width=8, eos_token_ids=(7,))
    jobs = scheduler.schedule()
    scheduler.set_logits(jobs[0], None)
    scheduler.fill_first_tokens(scheduler.first_token_draws()[0], np.asarray([7, 1], np.int32))
    plan = scheduler.chunk_plan()
    assert plan.active.tolist() == [False, True]
    tokens, reason = scheduler.results[(0, 0)]
    assert tokens.tolist() == [7] and reason == EOS


def test_a_pool_too_small_for_one_sequence_is_named():
    layout = PagedLayout(16)
    targets = np.asarray([[64]])
    with pytest.raises(RuntimeError, match="cannot hold one sequence: prompt 0 \\(40 tokens\\)"):
        _simulate(layout, [40], targets, num_pages=5, max_num_seqs=2, chunk=8)
