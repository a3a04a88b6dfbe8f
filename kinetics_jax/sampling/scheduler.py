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

    scheduler = Scheduler(layout, prompt_lengths, ...)
    while not scheduler.finished:
        for prefill in scheduler.schedule():   # grow the running, admit the waiting: the prompts to prefill
            scheduler.fill_first_tokens(prefill.prompt, <its samples' first tokens>)
        plan = scheduler.chunk_plan()          # every slot's row for the next decode chunk
        if plan.active.any():
            scheduler.record(<the chunk's tokens, generated counts and finish reasons>)
"""

from __future__ import annotations

import dataclasses
import heapq
from typing import NamedTuple

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
    holding a slot; first_tokens int32[N]: each sample's first token (drawn at prefill)."""

    full: list[int]
    tail: int
    running: int = 0
    first_tokens: np.ndarray | None = None

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
class Prefill:
    """One prompt to prefill: its index, and its page writes int32[3, n] as sampling.prefill takes them
    (destination page, source block, whether the page is full)."""

    prompt: int
    writes: np.ndarray


class SlotInputs(NamedTuple):
    """The next decode chunk's inputs, one row per slot (S = max_num_seqs): page_table int32[S, W] (NULL_PAGE
    in empty slots and past a row's pages), tokens int32[S] (the last sampled token, fed next), positions
    int32[S] (its position), generated int32[S] (tokens sampled so far), active bool[S], streams / samples
    int32[S] (the row's prompt stream id, its uint32 bits, and sample index), fresh bool[S] (admitted since the
    last chunk), copy_from / copy_to int32[S] (the tail page a fresh row copies into its first own page;
    NULL_PAGE: none). Host arrays from `Scheduler.chunk_plan`; `placed` puts them on a mesh."""

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

    @staticmethod
    def axes() -> "SlotInputs":
        """The logical axes of each input (slots are rows)."""
        rows = (BATCH,)
        return SlotInputs((BATCH, None), *([rows] * 9))

    def placed(self, mesh: Mesh) -> "SlotInputs":
        """The inputs as global arrays on `mesh`."""
        return SlotInputs(*(placement.put(x, axes, mesh) for x, axes in zip(self, self.axes())))


@dataclasses.dataclass
class SchedulerStats:
    """prefills: prompt prefills run (a prompt evicted and needed again is prefilled again); preemptions:
    sequences preempted; recomputed_tokens: tokens generated and thrown away by preemption; chunks: decode
    chunks run; peak_pages: the most pages in use at once (the null page not counted)."""

    prefills: int = 0
    preemptions: int = 0
    recomputed_tokens: int = 0
    chunks: int = 0
    peak_pages: int = 0


class Scheduler:
    """Continuous batching of `num_samples` samples of each prompt over `max_num_seqs` slots and a pool of
    `num_pages` pages laid out by `layout`; each decode chunk runs up to `chunk` steps. Sequences are admitted
    in (prompt, sample) order."""

    def __init__(self, layout: PagedLayout, prompt_lengths: list[int], num_samples: int, max_new_tokens: int, *,
                 num_pages: int, max_num_seqs: int, chunk: int, streams: np.ndarray, width: int,
                 eos_token_ids: tuple[int, ...]):
        self.layout, self.lengths = layout, list(prompt_lengths)
        self.eos = set(eos_token_ids)
        self.max_new_tokens, self.max_num_seqs, self.chunk, self.width = max_new_tokens, max_num_seqs, chunk, width
        self.streams = np.asarray(streams).astype(np.uint32).view(np.int32)
        self.pool = PagePool(num_pages)
        self.stats = SchedulerStats()
        self._waiting = [(p, s) for p in range(len(prompt_lengths)) for s in range(num_samples)]  # a heap
        self._waiting_of = np.full(len(prompt_lengths), num_samples, np.int64)
        self._prompts: dict[int, _Prompt] = {}
        self._slots: list[_Sequence | None] = [None] * max_num_seqs
        self._admitted = 0
        self.results: dict[tuple[int, int], tuple[list[int], int]] = {}  # (p, s) -> (tokens, finish reason)

    @property
    def finished(self) -> bool:
        return not self._waiting and all(seq is None for seq in self._slots)

    # ------------------------------------------------------------------------------------------- page counts
    def _prompt_pages(self, p: int) -> tuple[int, bool]:
        """(full pages, whether there is a partial tail page) of prompt p."""
        virtual = self.lengths[p] + self.layout.page_offset
        return virtual // self.layout.page_size, virtual % self.layout.page_size > 0

    def _own_pages_needed(self, p: int, generated: int) -> int:
        """Own pages a sample of prompt p needs to run its next chunk after `generated` tokens: it feeds the
        tokens at positions length + generated - 1 .. (up to `chunk` of them, never past max_new_tokens - 1)."""
        steps = min(self.chunk, self.max_new_tokens - generated)
        last = self.lengths[p] + generated - 1 + steps  # one past the last position written
        full, _ = self._prompt_pages(p)
        return ceil_div(last + self.layout.page_offset, self.layout.page_size) - full

    # ------------------------------------------------------------------------------------------- scheduling
    def schedule(self) -> list[Prefill]:
        """Grows every running sequence's pages for the next chunk (preempting the newest when the pool is
        short), then admits waiting sequences into free slots while pages allow. Returns the prompts to prefill
        (each needs `fill_first_tokens` before `chunk_plan`)."""
        self._grow_running()
        prefills = self._admit()
        self.stats.peak_pages = self.pool.peak_used
        return prefills

    def _grow_running(self) -> None:
        """Allocates every running sequence's pages for its next chunk, oldest first; when the pool is short,
        frees an idle prompt or preempts the newest running sequence (which may be the one growing)."""
        for seq in sorted((s for s in self._slots if s is not None), key=lambda s: s.admitted):
            need = self._own_pages_needed(seq.prompt, len(seq.tokens)) - len(seq.pages)
            while need > self.pool.free and self._slots[seq.slot] is seq:
                if not self._make_room():
                    raise RuntimeError(
                        f"the KV cache pool ({self.pool.num_pages - 1} pages of {self.layout.page_size} tokens) "
                        f"cannot hold one sequence: prompt {seq.prompt} ({self.lengths[seq.prompt]} tokens) with "
                        f"{len(seq.tokens)} generated needs {len(seq.pages) + need} own pages beside its "
                        f"prompt's; raise cache_budget_bytes")
            if self._slots[seq.slot] is seq and need > 0:
                seq.pages += self.pool.take(need)

    def _make_room(self) -> bool:
        """Frees pages: a cached prompt none of whose samples runs, else the most recently admitted running
        sequence, preempted back to the queue unless it is the only one running. False if nothing was freed."""
        idle = [p for p, entry in self._prompts.items() if entry.running == 0]
        if idle:
            self.pool.give(self._prompts.pop(max(idle)).pages)
            return True
        running = [s for s in self._slots if s is not None]
        if len(running) < 2:
            return False
        victim = max(running, key=lambda s: s.admitted)
        heapq.heappush(self._waiting, (victim.prompt, victim.sample))
        self._waiting_of[victim.prompt] += 1  # before the release: its prompt stays cached for it
        self._release(victim)
        self.stats.preemptions += 1
        self.stats.recomputed_tokens += len(victim.tokens)
        return True

    def _release(self, seq: _Sequence) -> None:
        """Frees a sequence's slot and own pages, and its prompt's pages if it was the prompt's last user."""
        self._slots[seq.slot] = None
        self.pool.give(seq.pages)
        entry = self._prompts[seq.prompt]
        entry.running -= 1
        if entry.running == 0 and self._waiting_of[seq.prompt] == 0:
            self.pool.give(self._prompts.pop(seq.prompt).pages)

    def _admit(self) -> list[Prefill]:
        """Admits waiting sequences, in (prompt, sample) order, into free slots while the pool holds their
        prompt (unless cached) and first chunk and still leaves the running sequences room for their next
        chunk (so that admission does not force an immediate preemption)."""
        prefills: list[Prefill] = []
        free_slots = [i for i, s in enumerate(self._slots) if s is None]
        growth = ceil_div(self.chunk, self.layout.page_size) + 1  # own pages a sequence may take per chunk
        while self._waiting and free_slots:
            p, s = self._waiting[0]
            full, partial = self._prompt_pages(p)
            running = sum(seq is not None for seq in self._slots)
            need = (0 if p in self._prompts else full + partial) + self._own_pages_needed(p, 1)
            if need + running * growth > self.pool.free:
                if running:
                    break
                if need > self.pool.free and not self._make_room():  # an idle cached prompt may go
                    raise RuntimeError(
                        f"the KV cache pool ({self.pool.num_pages - 1} pages of {self.layout.page_size} tokens) "
                        f"cannot hold prompt {p} ({self.lengths[p]} tokens) and its first "
                        f"{min(self.chunk, self.max_new_tokens)} new tokens; raise cache_budget_bytes")
                if need > self.pool.free:
                    continue
            heapq.heappop(self._waiting)
            self._waiting_of[p] -= 1
            if p not in self._prompts:
                pages = self.pool.take(full + partial)
                self._prompts[p] = _Prompt(pages[:full], pages[full] if partial else NULL_PAGE)
                prefills.append(Prefill(p, self._writes(pages, partial)))
                self.stats.prefills += 1
            self._prompts[p].running += 1
            self._admitted += 1
            slot = free_slots.pop(0)
            self._slots[slot] = _Sequence(p, s, slot, self._admitted, self.pool.take(self._own_pages_needed(p, 1)),
                                          [])
        return prefills

    def _writes(self, pages: list[int], partial: bool) -> np.ndarray:
        """int32[3, n] prefill writes of a prompt into `pages` (its full pages, then its tail)."""
        full = len(pages) - partial
        return np.asarray([pages, list(range(len(pages))), [1] * full + [0] * partial], np.int32).reshape(3, -1)

    def fill_first_tokens(self, p: int, first_tokens: np.ndarray) -> None:
        """The first tokens int32[N] of prompt p's samples, drawn by its prefill."""
        self._prompts[p].first_tokens = np.asarray(first_tokens)

    def refill_after(self) -> int:
        """How many rows finishing end the next chunk early: with sequences waiting, enough to refill about an
        eighth of the slots (at least one; at most what waits), so a free slot idles a few steps at most;
        with none waiting, never (max_num_seqs + 1)."""
        if not self._waiting:
            return self.max_num_seqs + 1
        return max(1, min(len(self._waiting), self.max_num_seqs // 8))

    def chunk_plan(self) -> SlotInputs:
        """The next decode chunk's rows. A sequence admitted since the last chunk takes its first token here; one
        whose first token ends it (an EOS id, or max_new_tokens 1) finishes without a chunk."""
        for seq in self._slots:
            if seq is not None and not seq.tokens:
                seq.tokens = [int(self._prompts[seq.prompt].first_tokens[seq.sample])]
                if seq.tokens[0] in self.eos or self.max_new_tokens == 1:
                    self._finish(seq, EOS if seq.tokens[0] in self.eos else LENGTH)
        s_, w = self.max_num_seqs, self.width
        table = np.full((s_, w), NULL_PAGE, np.int32)
        ints = {name: np.zeros(s_, np.int32) for name in ("tokens", "positions", "generated", "streams", "samples")}
        copy_from, copy_to = np.zeros(s_, np.int32), np.zeros(s_, np.int32)
        active, fresh = np.zeros(s_, bool), np.zeros(s_, bool)
        for i, seq in enumerate(self._slots):
            if seq is None:
                continue
            entry = self._prompts[seq.prompt]
            row = entry.full + seq.pages
            table[i, :len(row)] = row
            active[i], fresh[i] = True, seq.fresh
            ints["positions"][i] = self.lengths[seq.prompt] + len(seq.tokens) - 1
            ints["generated"][i] = len(seq.tokens)
            ints["tokens"][i] = seq.tokens[-1]
            ints["streams"][i], ints["samples"][i] = self.streams[seq.prompt], seq.sample
            if seq.fresh and entry.tail != NULL_PAGE:
                copy_from[i], copy_to[i] = entry.tail, seq.pages[0]
        return SlotInputs(table, active=active, fresh=fresh, copy_from=copy_from, copy_to=copy_to, **ints)

    def record(self, tokens: np.ndarray, generated: np.ndarray, reasons: np.ndarray) -> None:
        """A chunk's outputs per slot: tokens int32[S, K] (the tokens it sampled, -1 where a row was not
        running), generated int32[S] and finish reasons int32[S]; finished rows give back their slots and
        pages."""
        self.stats.chunks += 1
        for i, seq in enumerate(self._slots):
            if seq is None:
                continue
            seq.fresh = False
            new = tokens[i][tokens[i] >= 0]
            seq.tokens += new.tolist()
            assert len(seq.tokens) == generated[i], (len(seq.tokens), generated[i])
            if reasons[i] != RUNNING:
                self._finish(seq, int(reasons[i]))

    def _finish(self, seq: _Sequence, reason: int) -> None:
        self.results[(seq.prompt, seq.sample)] = (seq.tokens, reason)
        self._release(seq)
