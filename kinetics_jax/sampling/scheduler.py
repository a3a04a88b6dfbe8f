"""The continuous-batching scheduler, on the host (numpy): which (prompt, sample) sequences hold the engine's
`max_num_seqs` decode slots, which pages of the page pool each owns, and each chunk's inputs (`SlotInputs`).

A prompt's pages (its full pages, shared by its samples, and its partial last page, the `tail`) are written by
one prefill when its first sample is admitted; they are reference-counted by the prompt's running samples and
freed with the last one (or evicted earlier when the pool is short and none of its samples runs; a later
sample prefills it again). A sample owns its pages from the tail's copy on: the copy of the partial prompt page
(its first own page) and the pages of its generated tokens, allocated `chunk` tokens ahead, before each decode
chunk. When the pool runs out, the most recently admitted sequence is preempted: its pages are freed and it
goes back to the queue to be recomputed from its first token (its keys derive from (seed, stream, sample, step),
so it regenerates the same tokens).

On a mesh whose "data" axis is D, each data shard has its own pool and max_num_seqs / D slots; a shard with a
free slot and nothing of its own waiting claims the next unclaimed prompt, and all of that prompt's samples run
there (its pages are in that shard's pool). Prompts thus spread over the shards as slots free up.

    scheduler = Scheduler(layout, prompt_lengths, ...)
    while not scheduler.finished:
        for prefill in scheduler.schedule():   # grow the running, admit the waiting: the prompts to prefill
            scheduler.set_logits(prefill, <its last token's logits>)
        for draw in scheduler.first_token_draws():  # the newly admitted samples' first tokens
            scheduler.fill_first_tokens(draw, <tokens drawn from draw.logits>)
        plan = scheduler.chunk_plan()          # every slot's row for the next decode chunk
        if plan.active.any():
            scheduler.record(<the chunk's tokens, generated counts and finish reasons>)
        scheduler.take_finished()              # the (prompt, sample) pairs that just finished
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
from typing import Any, Callable, Collection, Iterator, NamedTuple

import numpy as np
from jax.sharding import Mesh

from kinetics_jax.cache import NULL_PAGE, PagedLayout
from kinetics_jax.checks import ceil_div
from kinetics_jax.sampling.stops import EOS, LENGTH, RUNNING
from kinetics_jax.sharding import placement
from kinetics_jax.sharding.axes import BATCH


class PagePool:
    """The free pages of a pool of `num_pages` pages (page 0, the null page, is never handed out)."""

    def __init__(self, num_pages: int):
        self.num_pages = num_pages
        self._free = list(range(num_pages - 1, NULL_PAGE, -1))  # pop() hands out the lowest id first
        self.peak_used = 0

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def used(self) -> int:
        return self.num_pages - 1 - len(self._free)

    def take(self, n: int) -> list[int]:
        if n > len(self._free):
            raise RuntimeError(f"PagePool.take({n}) with {len(self._free)} free pages")  # callers check first
        pages = [self._free.pop() for _ in range(n)]
        self.peak_used = max(self.peak_used, self.used)
        return pages

    def give(self, pages: list[int]) -> None:
        self._free.extend(reversed(pages))


@dataclasses.dataclass
class _Prompt:
    """A prompt's cached pages: `full` (shared by its samples) and `tail` (its partial last page, copied into
    each sample's first own page; NULL_PAGE when the prompt ends on a page boundary); `running`: its samples
    holding a slot; logits: its last token's logits from the prefill (a device array, opaque here); first:
    sample -> its first token, drawn from those logits when the sample is admitted."""

    full: list[int]
    tail: int
    running: int = 0
    logits: Any = None
    first: dict[int, int] = dataclasses.field(default_factory=dict)

    @property
    def pages(self) -> list[int]:
        return self.full + ([] if self.tail == NULL_PAGE else [self.tail])


@dataclasses.dataclass
class _Sequence:
    """Sample `sample` of prompt `prompt` in slot `slot`: its own pages, its generated tokens (the first
    included) and `admitted`, the admission counter (preemption takes the highest)."""

    prompt: int
    sample: int
    slot: int
    admitted: int
    pages: list[int]
    tokens: list[int]
    fresh: bool = True  # admitted since the last chunk: its first own page is the tail's copy


@dataclasses.dataclass(frozen=True)
class FirstDraw:
    """First tokens to draw: samples `samples` of prompt `prompt` (cached in data shard `shard`), from its
    prefill's `logits`."""

    shard: int
    prompt: int
    logits: Any
    samples: list[int]


@dataclasses.dataclass(frozen=True)
class Prefill:
    """One prompt to prefill: its index, the data shard whose pool it goes to, and its page writes int32[3, n]
    as sampling.prefill takes them (destination page in that pool, source block, whether the page is full)."""

    prompt: int
    shard: int
    writes: np.ndarray


class SlotInputs(NamedTuple):
    """The next decode chunk's inputs, one row per slot (S = max_num_seqs, shard-major: data shard d owns rows
    d * S / D .. (d + 1) * S / D - 1, and its page ids are local to its pool): page_table int32[S, W] (NULL_PAGE
    in empty slots and past a row's pages), tokens int32[S] (the last sampled token, fed next), positions
    int32[S] (its position), generated int32[S] (tokens sampled so far), active bool[S], streams / samples
    int32[S] (the row's prompt stream id, its uint32 bits, and sample index), fresh bool[S] (admitted since the
    last chunk), copy_from / copy_to int32[S] (the tail page a fresh row copies into its first own page;
    NULL_PAGE: none), leader / place / shared int32[S] (the row's group by shared prompt: the shard-local row
    that reads the prompt's full pages for it, its place in that read, and the number of those pages, 0 when
    they are too few to read apart; see
    attention.SharedPrefix). Host arrays from `Scheduler.chunk_plan`; `placed` puts them on a mesh."""

    page_table: np.ndarray
    tokens: np.ndarray
    positions: np.ndarray
    generated: np.ndarray
    active: np.ndarray
    streams: np.ndarray
    samples: np.ndarray
    fresh: np.ndarray
    copy_from: np.ndarray
    copy_to: np.ndarray
    leader: np.ndarray
    place: np.ndarray
    shared: np.ndarray

    def placed(self, mesh: Mesh) -> "PlacedSlots":
        """The inputs as global arrays on `mesh`, in two transfers: the page table, and the per-slot vectors
        stacked (a chunk's inputs cost two host-to-device puts, not ten)."""
        vectors = np.stack([np.asarray(x, np.int32) for x in self[1:]])
        return PlacedSlots(placement.put(self.page_table, (BATCH, None), mesh),
                           placement.put(vectors, (None, BATCH), mesh))


class PlacedSlots(NamedTuple):
    """SlotInputs on a mesh: page_table int32[S, W] and vectors int32[12, S] (the other fields in SlotInputs'
    order, the bools as 0 / 1)."""

    page_table: Any
    vectors: Any

    def unpacked(self) -> SlotInputs:
        """The SlotInputs fields (inside the chunk program: traced arrays)."""
        fields = dict(zip(SlotInputs._fields[1:], self.vectors))
        for name in ("active", "fresh"):
            fields[name] = fields[name] != 0
        return SlotInputs(self.page_table, **fields)


@dataclasses.dataclass
class SchedulerStats:
    """prefills: prompt prefills run (a prompt evicted and needed again is prefilled again); preemptions:
    sequences preempted; recomputed_tokens: tokens generated and thrown away by preemption; chunks: decode
    chunks run; peak_pages: the most pages in use at once in one data shard's pool (the null page not
    counted)."""

    prefills: int = 0
    preemptions: int = 0
    recomputed_tokens: int = 0
    chunks: int = 0
    peak_pages: int = 0


class _Geometry(NamedTuple):
    """What every shard's scheduling reads: the layout, the prompts' lengths, the samples' budget and the chunk."""

    layout: PagedLayout
    lengths: list[int]
    max_new_tokens: int
    chunk: int

    def prompt_pages(self, p: int) -> tuple[int, bool]:
        """(full pages, whether there is a partial tail page) of prompt p."""
        virtual = self.lengths[p] + self.layout.page_offset
        return virtual // self.layout.page_size, virtual % self.layout.page_size > 0

    def own_pages_needed(self, p: int, generated: int) -> int:
        """Own pages a sample of prompt p needs to run its next chunk after `generated` tokens: it feeds the
        tokens at positions length + generated - 1 .. (up to `chunk` of them, never past max_new_tokens - 1)."""
        steps = min(self.chunk, self.max_new_tokens - generated)
        last = self.lengths[p] + generated - 1 + steps  # one past the last position written
        full, _ = self.prompt_pages(p)
        return ceil_div(last + self.layout.page_offset, self.layout.page_size) - full


class _Shard:
    """One data shard's part of the engine: its page pool, its slots, the prompts cached in its pool and the
    waiting sequences of the prompts it has claimed (a heap in (prompt, sample) order)."""

    def __init__(self, index: int, geometry: _Geometry, num_pages: int, slots: int):
        self.index, self.g = index, geometry
        self.pool = PagePool(num_pages)
        self.waiting: list[tuple[int, int]] = []
        self.waiting_of: dict[int, int] = {}  # claimed prompt -> its samples waiting here
        self.prompts: dict[int, _Prompt] = {}
        self.slots: list[_Sequence | None] = [None] * slots
        self.admitted = 0

    @property
    def idle(self) -> bool:
        return not self.waiting and all(seq is None for seq in self.slots)

    def claim(self, p: int, samples: list[int]) -> None:
        for s in samples:
            heapq.heappush(self.waiting, (p, s))
        self.waiting_of[p] = self.waiting_of.get(p, 0) + len(samples)

    def grow_running(self, stats: SchedulerStats) -> None:
        """Allocates every running sequence's pages for its next chunk, oldest first; when the pool is short,
        frees an idle prompt or preempts the newest running sequence (which may be the one growing)."""
        for seq in sorted((s for s in self.slots if s is not None), key=lambda s: s.admitted):
            need = self.g.own_pages_needed(seq.prompt, len(seq.tokens)) - len(seq.pages)
            while need > self.pool.free and self.slots[seq.slot] is seq:
                if not self._make_room(stats):
                    raise RuntimeError(
                        f"the KV cache pool ({self.pool.num_pages - 1} pages of {self.g.layout.page_size} tokens) "
                        f"cannot hold one sequence: prompt {seq.prompt} ({self.g.lengths[seq.prompt]} tokens) "
                        f"with {len(seq.tokens)} generated needs {len(seq.pages) + need} own pages beside its "
                        f"prompt's; raise cache_budget_bytes")
            if self.slots[seq.slot] is seq and need > 0:
                seq.pages += self.pool.take(need)

    def _make_room(self, stats: SchedulerStats) -> bool:
        """Frees pages: a cached prompt none of whose samples runs, else the most recently admitted running
        sequence, preempted back to the queue unless it is the only one running. False if nothing was freed."""
        idle = [p for p, entry in self.prompts.items() if entry.running == 0]
        if idle:
            self.pool.give(self.prompts.pop(max(idle)).pages)
            return True
        running = [s for s in self.slots if s is not None]
        if len(running) < 2:
            return False
        victim = max(running, key=lambda s: s.admitted)
        self.claim(victim.prompt, [victim.sample])  # before the release: its prompt stays cached for it
        self.release(victim)
        stats.preemptions += 1
        stats.recomputed_tokens += len(victim.tokens)
        return True

    def release(self, seq: _Sequence) -> None:
        """Frees a sequence's slot and own pages, and its prompt's pages if it was the prompt's last user."""
        self.slots[seq.slot] = None
        self.pool.give(seq.pages)
        entry = self.prompts[seq.prompt]
        entry.running -= 1
        if entry.running == 0 and self.waiting_of[seq.prompt] == 0:
            self.pool.give(self.prompts.pop(seq.prompt).pages)
            del self.waiting_of[seq.prompt]

    def admit(self, stats: SchedulerStats, claim_next: Callable[["_Shard"], bool]) -> list[Prefill]:
        """Admits waiting sequences, in (prompt, sample) order, into free slots while the pool holds their
        prompt (unless cached) and first chunk and still leaves the running sequences room for their next
        chunk (so that admission does not force an immediate preemption). With nothing of its own waiting, the
        shard claims the next unclaimed prompt (claim_next)."""
        prefills: list[Prefill] = []
        free_slots = [i for i, s in enumerate(self.slots) if s is None]
        growth = ceil_div(self.g.chunk, self.g.layout.page_size) + 1  # own pages a sequence may take per chunk
        while free_slots and (self.waiting or claim_next(self)):
            p, s = self.waiting[0]
            full, partial = self.g.prompt_pages(p)
            running = sum(seq is not None for seq in self.slots)
            need = (0 if p in self.prompts else full + partial) + self.g.own_pages_needed(p, 1)
            if need + running * growth > self.pool.free:
                if running:
                    break
                if need > self.pool.free and not self._make_room(stats):  # an idle cached prompt may go
                    raise RuntimeError(
                        f"the KV cache pool ({self.pool.num_pages - 1} pages of {self.g.layout.page_size} tokens) "
                        f"cannot hold prompt {p} ({self.g.lengths[p]} tokens) and its first "
                        f"{min(self.g.chunk, self.g.max_new_tokens)} new tokens; raise cache_budget_bytes")
                if need > self.pool.free:
                    continue
            heapq.heappop(self.waiting)
            self.waiting_of[p] -= 1
            if p not in self.prompts:
                pages = self.pool.take(full + partial)
                self.prompts[p] = _Prompt(pages[:full], pages[full] if partial else NULL_PAGE)
                prefills.append(Prefill(p, self.index, _writes(pages, partial)))
                stats.prefills += 1
            self.prompts[p].running += 1
            self.admitted += 1
            slot = free_slots.pop(0)
            self.slots[slot] = _Sequence(p, s, slot, self.admitted, self.pool.take(self.g.own_pages_needed(p, 1)),
                                         [])
        return prefills


def _writes(pages: list[int], partial: bool) -> np.ndarray:
    """int32[3, n] prefill writes of a prompt into `pages` (its full pages, then its tail)."""
    full = len(pages) - partial
    return np.asarray([pages, list(range(len(pages))), [1] * full + [0] * partial], np.int32).reshape(3, -1)


class Scheduler:
    """Continuous batching of `num_samples` samples of each prompt over `max_num_seqs` slots split evenly over
    `shards` data shards, each with a pool of `num_pages` pages laid out by `layout`; each decode chunk runs up
    to `chunk` steps. A shard with a free slot and nothing of its own waiting claims the next prompt (in prompt
    order): all of a prompt's samples run in the shard that holds its pages. `skip`: (prompt, sample) pairs not
    to run (a resumed job's finished samples). `share_width`: the samples of a prompt whose queries read its
    full pages together, in groups of samples s // share_width (1: each row reads its own); a prompt of fewer
    than `share_from` full pages is read by each sample with its own pages (attention.min_shared_pages)."""

    def __init__(self, layout: PagedLayout, prompt_lengths: list[int], num_samples: int, max_new_tokens: int, *,
                 num_pages: int, max_num_seqs: int, chunk: int, streams: np.ndarray, width: int,
                 eos_token_ids: tuple[int, ...], shards: int = 1, skip: Collection[tuple[int, int]] = (),
                 share_width: int = 1, share_from: int = 1):
        assert max_num_seqs % shards == 0, (max_num_seqs, shards)  # continuous.check refuses it for users
        self.g = _Geometry(layout, list(prompt_lengths), max_new_tokens, chunk)
        self.eos = set(eos_token_ids)
        self.max_num_seqs, self.width = max_num_seqs, width
        self.share_width, self.share_from = share_width, share_from
        self.streams = np.asarray(streams).astype(np.uint32).view(np.int32)
        self.stats = SchedulerStats()
        self.shards = [_Shard(d, self.g, num_pages, max_num_seqs // shards) for d in range(shards)]
        skip = set(skip)
        todo = [(p, [s for s in range(num_samples) if (p, s) not in skip]) for p in range(len(prompt_lengths))]
        self._unclaimed = collections.deque((p, samples) for p, samples in todo if samples)
        self._unclaimed_samples = sum(len(samples) for _, samples in self._unclaimed)
        self.results: dict[tuple[int, int], tuple[np.ndarray, int]] = {}  # (p, s) -> (int32 tokens, reason)
        self._finished: list[tuple[int, int]] = []  # since the last take_finished, in finishing order

    @property
    def finished(self) -> bool:
        return not self._unclaimed and all(shard.idle for shard in self.shards)

    def _claim_next(self, shard: _Shard) -> bool:
        if not self._unclaimed:
            return False
        p, samples = self._unclaimed.popleft()
        self._unclaimed_samples -= len(samples)
        shard.claim(p, samples)
        return True

    def schedule(self) -> list[Prefill]:
        """Grows every running sequence's pages for the next chunk (preempting the newest when a pool is short),
        then admits waiting sequences into free slots while pages allow, shard by shard. Returns the prompts to
        prefill (each needs `set_logits`, and the first_token_draws their tokens, before `chunk_plan`)."""
        prefills = []
        for shard in self.shards:
            shard.grow_running(self.stats)
            prefills += shard.admit(self.stats, self._claim_next)
        self.stats.peak_pages = max(shard.pool.peak_used for shard in self.shards)
        return prefills

    def set_logits(self, job: Prefill, logits: Any) -> None:
        """A prefilled prompt's last-token logits (kept while its pages are cached)."""
        self.shards[job.shard].prompts[job.prompt].logits = logits

    def first_token_draws(self) -> list[FirstDraw]:
        """The admitted sequences whose first token is not drawn yet, by prompt (at most max_num_seqs samples
        in all: first tokens are drawn as samples are admitted, not N at a time)."""
        wanted: dict[tuple[int, int], list[int]] = {}
        for _, shard, seq in self._rows():
            if seq is not None and not seq.tokens and seq.sample not in shard.prompts[seq.prompt].first:
                wanted.setdefault((shard.index, seq.prompt), []).append(seq.sample)
        return [FirstDraw(d, p, self.shards[d].prompts[p].logits, samples) for (d, p), samples in wanted.items()]

    def fill_first_tokens(self, draw: FirstDraw, tokens: np.ndarray) -> None:
        """The first tokens int32[len(draw.samples)] of a draw's samples."""
        first = self.shards[draw.shard].prompts[draw.prompt].first
        first.update(zip(draw.samples, np.asarray(tokens)[:len(draw.samples)].tolist()))

    def refill_after(self) -> int:
        """How many rows finishing end the next chunk early: with sequences waiting, enough to refill about an
        eighth of the slots (at least one; at most what waits), so a free slot idles a few steps at most;
        with none waiting, never (max_num_seqs + 1)."""
        waiting = self._unclaimed_samples + sum(len(shard.waiting) for shard in self.shards)
        if not waiting:
            return self.max_num_seqs + 1
        return max(1, min(waiting, self.max_num_seqs // 8))

    def _rows(self) -> Iterator[tuple[int, _Shard, _Sequence | None]]:
        """(row, shard, sequence or None) of every slot, shard-major."""
        i = 0
        for shard in self.shards:
            for seq in shard.slots:
                yield i, shard, seq
                i += 1

    def chunk_plan(self) -> SlotInputs:
        """The next decode chunk's rows. A sequence admitted since the last chunk takes its first token here; one
        whose first token ends it (an EOS id, or max_new_tokens 1) finishes without a chunk."""
        for _, shard, seq in self._rows():
            if seq is not None and not seq.tokens:
                seq.tokens = [shard.prompts[seq.prompt].first[seq.sample]]
                if seq.tokens[0] in self.eos or self.g.max_new_tokens == 1:
                    self._finish(shard, seq, EOS if seq.tokens[0] in self.eos else LENGTH)
        s_, w = self.max_num_seqs, self.width
        table = np.full((s_, w), NULL_PAGE, np.int32)
        ints = {name: np.zeros(s_, np.int32) for name in ("tokens", "positions", "generated", "streams", "samples")}
        copy_from, copy_to = np.zeros(s_, np.int32), np.zeros(s_, np.int32)
        active, fresh = np.zeros(s_, bool), np.zeros(s_, bool)
        local = s_ // len(self.shards)
        leader, place, shared = np.arange(s_, dtype=np.int32) % local, np.zeros(s_, np.int32), np.zeros(s_, np.int32)
        leaders: dict[tuple[int, int, int], int] = {}  # (shard, prompt, sample group) -> its first local row
        for i, shard, seq in self._rows():
            if seq is None:
                continue
            key = shard.index, seq.prompt, seq.sample // self.share_width
            leader[i] = leaders.setdefault(key, i % local)
            full = len(shard.prompts[seq.prompt].full)
            place[i], shared[i] = seq.sample % self.share_width, full if full >= self.share_from else 0
            entry = shard.prompts[seq.prompt]
            row = entry.full + seq.pages
            table[i, :len(row)] = row
            active[i], fresh[i] = True, seq.fresh
            ints["positions"][i] = self.g.lengths[seq.prompt] + len(seq.tokens) - 1
            ints["generated"][i] = len(seq.tokens)
            ints["tokens"][i] = seq.tokens[-1]
            ints["streams"][i], ints["samples"][i] = self.streams[seq.prompt], seq.sample
            if seq.fresh and entry.tail != NULL_PAGE:
                copy_from[i], copy_to[i] = entry.tail, seq.pages[0]
        return SlotInputs(table, active=active, fresh=fresh, copy_from=copy_from, copy_to=copy_to, leader=leader,
                          place=place, shared=shared, **ints)

    def record(self, tokens: np.ndarray, generated: np.ndarray, reasons: np.ndarray) -> None:
        """A chunk's outputs per slot: tokens int32[S, K] (the tokens it sampled, -1 where a row was not
        running), generated int32[S] and finish reasons int32[S]; finished rows give back their slots and
        pages."""
        self.stats.chunks += 1
        for i, shard, seq in list(self._rows()):
            if seq is None:
                continue
            seq.fresh = False
            new = tokens[i][tokens[i] >= 0]
            seq.tokens += new.tolist()
            assert len(seq.tokens) == generated[i], (len(seq.tokens), generated[i])
            if reasons[i] != RUNNING:
                self._finish(shard, seq, int(reasons[i]))

    def _finish(self, shard: _Shard, seq: _Sequence, reason: int) -> None:
        self.results[(seq.prompt, seq.sample)] = (np.asarray(seq.tokens, np.int32), reason)
        self._finished.append((seq.prompt, seq.sample))
        shard.release(seq)

    def take_finished(self) -> list[tuple[int, int]]:
        """The (prompt, sample) pairs finished since the last call, in the order they finished."""
        out, self._finished = self._finished, []
        return out
