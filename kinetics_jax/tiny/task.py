"""The synthetic reasoning task of the embedded tiny family: pointer chasing through a graph listed in the prompt.

    edges : v3 w17 ; v30 w9 ; ... (32 edges, shuffled) question : start v12 hops 27 think :
    1 v12 w30 ; 2 v30 w5 ; ... 27 v8 w22 ; answer v8 v22 <eos>

The graph is one random cycle through the 32 nodes, listed edge by edge in random order: "vA wB" says that node
A leads to node B (the target is written with its w-name, so each v-name occurs once in the edge list and a
lookup is a plain copy of the token that follows it). Starting at `start`, the chain of thought follows `hops`
edges (25 to 31, so no node is visited twice), one step of 4 tokens each ("i vA wB ;"), then answers with the
last two nodes it visited. Why this task:

- **Every step must look back at the prompt.** The successor of the current node is written only in the edge
  list, at a random position; nothing in the chain predicts it. Which KV blocks a sparse policy keeps is
  therefore exactly the question of whether the model can still read the edge it needs.
- **A chain of thought of 104 to 128 tokens** (4 per hop plus the answer) after a 106-token prompt, longer than
  the block top-k budgets the study compares, and it is needed: without the chain the answer is a 25 to 31-fold
  composition of a random function, which no model of this size computes in one forward pass. Truncating the
  chain loses the answer.
- **Chance is 1 / (32 x 31) = 0.1%:** the answer is an ordered pair of distinct nodes.
- **Errors compound**: a per-step lookup error rate e gives about (1 - e)^hops accuracy, so a bigger model
  (fewer lookup errors) is more accurate, and independent samples (pass@k) recover from single slips.

Problems are generated from (seed, index) alone, so a dataset is reproducible and infinite. `check` is exact:
it parses "answer X Y" from the generated text and compares both nodes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import numpy as np

from kinetics_jax import outputs

NODES = 32
MIN_HOPS, MAX_HOPS = 25, 31
PAD, EOS = "<pad>", "<eos>"
WORDS = ("edges", "question", "start", "hops", "think", "answer", ":", ";")
VOCAB: tuple[str, ...] = ((PAD, EOS) + WORDS + tuple(f"v{i}" for i in range(NODES))
                          + tuple(f"w{i}" for i in range(NODES)) + tuple(str(i) for i in range(1, MAX_HOPS + 1)))
TOKEN_ID = {token: i for i, token in enumerate(VOCAB)}
PROMPT_TOKENS = 3 * NODES + 10      # "edges :" + 3 per edge + "question : start v hops n think :"
MAX_TOKENS = PROMPT_TOKENS + 4 * MAX_HOPS + 4  # + the chain + "answer X Y <eos>"
CHANCE = 1.0 / (NODES * (NODES - 1))

_ANSWER = re.compile(r"answer\s+(v\d+)\s+(v\d+)")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One task instance: successor[i] is the node edge i leads to; edge_order the order edges are listed."""

    index: int
    successor: tuple[int, ...]
    edge_order: tuple[int, ...]
    start: int
    hops: int

    @property
    def chain(self) -> list[int]:
        """The nodes visited, start included: hops + 1 of them."""
        nodes = [self.start]
        for _ in range(self.hops):
            nodes.append(self.successor[nodes[-1]])
        return nodes

    @property
    def answer(self) -> str:
        """The gold answer text: the last two nodes of the chain."""
        *_, before, last = self.chain
        return f"v{before} v{last}"

    @property
    def id(self) -> str:
        return f"chase-{self.index}"

    def prompt(self) -> str:
        edges = " ; ".join(f"v{i} w{self.successor[i]}" for i in self.edge_order)
        return f"edges : {edges} ; question : start v{self.start} hops {self.hops} think :"

    def solution(self) -> str:
        """The reference chain of thought and answer (what training teaches), EOS included."""
        chain = self.chain
        steps = " ".join(f"{i + 1} v{chain[i]} w{chain[i + 1]} ;" for i in range(self.hops))
        return f"{steps} answer {self.answer} {EOS}"


def make_problem(seed: int, index: int, nodes: int = NODES, hops: tuple[int, int] = (MIN_HOPS, MAX_HOPS)
                 ) -> Problem:
    """Problem `index` of the dataset `seed` (a pure function of the arguments). The task is the default; training
    also uses smaller graphs (`nodes` of the NODES names, chosen at random) with `hops` in [lo, hi]."""
    if not 2 <= nodes <= NODES or not 1 <= hops[0] <= hops[1] < nodes:
        raise ValueError(f"need 2 <= nodes <= {NODES} and 1 <= hops within [1, nodes - 1]; got {nodes}, {hops}")
    rng = np.random.default_rng([seed, index, nodes, *hops])
    cycle = rng.permutation(NODES)[:nodes]
    successor = np.full(NODES, -1, np.int64)
    successor[cycle] = np.roll(cycle, -1)
    return Problem(index, tuple(int(s) for s in successor), tuple(int(i) for i in rng.permutation(cycle)),
                   int(rng.choice(cycle)), int(rng.integers(hops[0], hops[1] + 1)))


SHORT_NODES = (4, 8)
SHORT_TOKENS = 3 * SHORT_NODES[1] + 10 + 4 * (SHORT_NODES[1] - 1) + 4  # the longest short problem, 94 tokens
SHORT_PER_LONG = 4  # a short step has 4x the problems of a long one (about 1.6x the tokens)


def training_problem(seed: int, index: int, short: bool) -> Problem:
    """Problem `index` of a training step. Short steps draw graphs of 4 to 8 nodes (1 to nodes - 1 hops); long
    steps draw half their problems from the task itself and half from graphs of 9 to 31 nodes. The lookup is an
    induction circuit (find the current node in the edge list, copy the token after it), and it only forms when
    a step holds many lookups: at 16 problems per step a 0.1M model sat at the loss of guessing every lookup for
    5000 steps, while 64 short problems per step formed it within 400 steps. Short problems are where it forms
    (and they are cheap), long ones carry it over to full-size prompts through relative positions."""
    rng = np.random.default_rng([seed, index, 0])
    if short:
        nodes = int(rng.integers(SHORT_NODES[0], SHORT_NODES[1] + 1))
    elif rng.random() < 0.5:
        return make_problem(seed, index)
    else:
        nodes = int(rng.integers(SHORT_NODES[1] + 1, NODES))
    return make_problem(seed, index, nodes, (1, nodes - 1))


def is_short_step(seed: int, step: int) -> bool:
    """Whether training step `step` is a short one (three quarters are, drawn from (seed, step))."""
    return bool(np.random.default_rng([seed, step, 1]).random() < 0.75)


def encode(text: str) -> list[int]:
    """Whitespace-separated task text -> token ids (the tokenizer.json of `write_tokenizer` does the same)."""
    try:
        return [TOKEN_ID[w] for w in text.split()]
    except KeyError as e:
        raise ValueError(f"{e.args[0]!r} is not a token of the task vocabulary") from None


def decode(ids) -> str:
    return " ".join(VOCAB[int(i)] for i in ids if VOCAB[int(i)] not in (PAD, EOS))


def extract_answer(text: str) -> str | None:
    """The "X Y" after the last "answer" in a generated text, or None."""
    found = _ANSWER.findall(text)
    return " ".join(found[-1]) if found else None


def check(text: str, problem: Problem) -> bool:
    """Whether a generated text answers `problem` correctly (both nodes, in order)."""
    return extract_answer(text) == problem.answer


def training_batch(seed: int, step: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """The batch of training step `step`: tokens int32[B, W] (right-padded with <pad>) and a loss mask
    float32[B, W] that is 1 where the next token belongs to the chain or the answer (the prompt's random edges
    are never targets). A long step has B = batch problems of width W = MAX_TOKENS, a short step B =
    SHORT_PER_LONG * batch problems of width SHORT_TOKENS. Problem b of step s is
    training_problem(seed, s * SHORT_PER_LONG * batch + b, short), so the data position is the step and a resumed
    run sees exactly the batches it would have."""
    short = is_short_step(seed, step)
    rows, width = (SHORT_PER_LONG * batch, SHORT_TOKENS) if short else (batch, MAX_TOKENS)
    tokens = np.zeros((rows, width), np.int32)
    mask = np.zeros((rows, width), np.float32)
    for b in range(rows):
        problem = training_problem(seed, step * SHORT_PER_LONG * batch + b, short)
        prompt, solution = encode(problem.prompt()), encode(problem.solution())
        ids = prompt + solution
        tokens[b, :len(ids)] = ids
        mask[b, len(prompt) - 1:len(ids) - 1] = 1.0  # position t predicts token t + 1
    return tokens, mask


def write_tokenizer(path: str) -> None:
    """tokenizer.json (a word-level Hugging Face tokenizer over VOCAB), tokenizer_config.json and
    generation_config.json (EOS) into directory `path`, readable by kinetics_jax.Tokenizer."""
    os.makedirs(path, exist_ok=True)
    special = [PAD, EOS]
    spec = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": TOKEN_ID[t], "content": t, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True} for t in special],
        "normalizer": None, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": None,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": False},
        "model": {"type": "WordLevel", "vocab": TOKEN_ID, "unk_token": PAD},
    }
    files = {"tokenizer.json": spec,
             "tokenizer_config.json": {"eos_token": EOS, "pad_token": PAD, "model_max_length": MAX_TOKENS},
             "generation_config.json": {"eos_token_id": TOKEN_ID[EOS], "pad_token_id": TOKEN_ID[PAD]}}
    for name, value in files.items():
        with outputs.replacing(os.path.join(path, name)) as f:
            json.dump(value, f, indent=1)
