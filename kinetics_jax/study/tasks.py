"""What the study evaluates on (`Task`): its problems (`Item`s), how a prompt is tokenized, and how a generated text
is graded. `ChaseTask` is the tiny family's pointer chasing (kinetics_jax/tiny/task.py); `MathTask` a math
dataset in the Kinetics prompt, for real Qwen3 checkpoints."""

from __future__ import annotations

import dataclasses
from typing import Protocol

from kinetics_jax.eval import datasets
from kinetics_jax.eval.records import math_verdict
from kinetics_jax.tiny import task as chase
from kinetics_jax.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class Item:
    """One problem: id, prompt text (before the tokenizer's template, if any) and gold answer."""

    id: str
    prompt: str
    gold: str


class Task(Protocol):
    """What the study evaluates on: its problems, how a prompt is tokenized, and how a generated text is graded."""

    name: str
    max_new_tokens: int
    truncation_budgets: tuple[int, ...]

    def items(self, count: int) -> list[Item]: ...
    def prompt_ids(self, item: Item, tokenizer: Tokenizer) -> list[int]: ...
    def grade(self, text: str, gold: str) -> tuple[str | None, bool]: ...


@dataclasses.dataclass(frozen=True)
class ChaseTask:
    """The pointer-chasing task of the tiny family (kinetics_jax/tiny/task.py) on evaluation seed `seed` (training
    used seed 0). Generation may run to the longest solution; the budgets cut chains short of it."""

    seed: int = 1
    name: str = "chase"
    max_new_tokens: int = chase.MAX_TOKENS - chase.PROMPT_TOKENS
    truncation_budgets: tuple[int, ...] = (32, 64, 96, 104, 112, 120)

    def items(self, count: int) -> list[Item]:
        problems = [chase.make_problem(self.seed, i) for i in range(count)]
        return [Item(p.id, p.prompt(), p.answer) for p in problems]

    def prompt_ids(self, item: Item, tokenizer: Tokenizer) -> list[int]:
        return tokenizer.encode(item.prompt)

    def grade(self, text: str, gold: str) -> tuple[str | None, bool]:
        answer = chase.extract_answer(text)
        return answer, answer == gold


@dataclasses.dataclass(frozen=True)
class MathTask:
    """A math dataset (kinetics_jax.eval.datasets) in the Kinetics prompt and the chat template, graded by
    math-verify: the study on real Qwen3 checkpoints."""

    path: str
    name: str = "aime24"
    max_new_tokens: int = 32768
    truncation_budgets: tuple[int, ...] = (2048, 4096, 8192, 16384)
    enable_thinking: bool = True

    def items(self, count: int) -> list[Item]:
        problems = datasets.load_problems(self.path, self.name)[:count]
        return [Item(p.id, p.problem, p.answer) for p in problems]

    def prompt_ids(self, item: Item, tokenizer: Tokenizer) -> list[int]:
        problem = datasets.Problem(id=item.id, problem=item.prompt, answer=item.gold, solution=None, dataset=self.name)
        return datasets.prompt_ids(problem, tokenizer, enable_thinking=self.enable_thinking)

    def grade(self, text: str, gold: str) -> tuple[str | None, bool]:
        return math_verdict(text, gold)
