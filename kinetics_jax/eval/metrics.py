"""Accuracy metrics of test-time scaling: coverage (pass@k), majority voting (maj@k), long-CoT truncation curves,
and the per-problem table that the scaling analysis reads.

    pass_at_k(n=32, c=5, k=4)                                   # unbiased coverage, 1 - C(n-c, k) / C(n, k)
    majority_vote(["\\frac{1}{2}", "0.5", "1"], gold="1/2", k=3)   # 1.0: two spellings of 1/2 form one class
    truncation_accuracy(ids, gold, [2048, 4096], tokenizer.decode)
    per_query_table(records, num_samples=32)                    # rows of plain dicts (CSV/JSON ready); refuses
                                                                # a problem without exactly 32 distinct samples

Majority voting: the answers (extracted, see `grading.extract_answer`) are grouped into equivalence classes by
`grading.answers_equivalent`: each answer joins the first class whose first member (its representative) it is
equivalent to, else starts a new class. Samples without an answer (None) abstain. The winning class is correct
when its representative grades equal to the gold (`grading.answer_is_correct`).
- `majority_vote` (maj@k) votes over the first k samples; ties go to the class seen first; no answer at all
  scores 0.
- `expected_majority_vote` is its expectation over a uniformly random k-subset of the n samples, with ties split
  evenly between the tied classes: exact (a small dynamic program over class counts, no enumeration), order
  independent, and equal to pass@1 = c/n at k = 1 when the grader is consistent.
"""

from __future__ import annotations

import collections
import math
from fractions import Fraction
from typing import Any, Callable, Iterable, Mapping, Sequence

from kinetics_jax.eval import grading


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k), the probability that a
    uniformly random k-subset holds at least one correct sample. Computed in the product form
    1 - prod_{i=n-c+1}^{n} (i - k) / i in exact integer arithmetic, then rounded once: no cancellation, c/n
    exactly at k = 1, exactly 0.0 when c == 0 and exactly 1.0 when n - c < k."""
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n, got c={c}, n={n}")
    if c == 0:
        return 0.0
    if n - c < k:
        return 1.0
    survivors, total = 1, 1
    for i in range(n - c + 1, n + 1):
        survivors *= i - k
        total *= i
    return float(1 - Fraction(survivors, total))


def _check_k(answers: Sequence[Any], k: int) -> None:
    if not 1 <= k <= len(answers):
        raise ValueError(f"maj@k needs 1 <= k <= len(answers), got k={k} with {len(answers)} answers")


def _answer_classes(answers: Sequence[str | None], timeout_s: float) -> list[list[int]]:
    """Indices of the answers in each equivalence class, classes in order of first appearance; None abstains."""
    classes: list[list[int]] = []
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        for members in classes:
            if grading.answers_equivalent(answers[members[0]], answer, timeout_s=timeout_s):
                members.append(i)
                break
        else:
            classes.append([i])
    return classes


def majority_vote(answers: Sequence[str | None], gold: str, k: int, *, timeout_s: float = 5.0) -> float:
    """maj@k over the first k answers: 1.0 if the most frequent answer class (ties: the class seen first) is
    correct, else 0.0 (also when none of the k samples has an answer). `timeout_s` bounds each comparison."""
    _check_k(answers, k)
    classes = _answer_classes(answers[:k], timeout_s)
    if not classes:
        return 0.0
    winner = max(classes, key=len)  # max keeps the first of equal-size classes: the one seen first
    return float(grading.answer_is_correct(answers[winner[0]], gold, timeout_s=timeout_s))


def expected_majority_vote(answers: Sequence[str | None], gold: str, k: int, *, timeout_s: float = 5.0) -> float:
    """E[maj@k] over a uniformly random k-subset of the n = len(answers) samples, ties split evenly between the
    tied classes; abstaining samples (None) take subset slots but no votes. Exact (milliseconds for n = 32)."""
    _check_k(answers, k)
    n = len(answers)
    classes = _answer_classes(answers, timeout_s)
    sizes = [len(members) for members in classes]
    abstain = n - sum(sizes)
    wins = Fraction(0)  # number of k-subsets won by a correct class (fractional for ties)
    for c, members in enumerate(classes):
        if not grading.answer_is_correct(answers[members[0]], gold, timeout_s=timeout_s):
            continue
        others = sizes[:c] + sizes[c + 1:]
        for m in range(1, min(sizes[c], k) + 1):  # class c gets m votes in the subset
            # ways[(j, t)]: ways to take j samples from the other classes, each getting <= m votes, t with m.
            ways: dict[tuple[int, int], int] = {(0, 0): 1}
            for size in others:
                grown: dict[tuple[int, int], int] = collections.defaultdict(int)
                for (j, t), count in ways.items():
                    for x in range(min(size, m, k - m - j) + 1):
                        grown[(j + x, t + (x == m))] += count * math.comb(size, x)
                ways = grown
            for (j, t), count in ways.items():
                rest = math.comb(abstain, k - m - j)  # the remaining slots go to abstaining samples
                wins += Fraction(math.comb(sizes[c], m) * count * rest, 1 + t)
    return float(wins / math.comb(n, k))


def truncation_accuracy(token_ids: Sequence[int], gold: str, budgets: Iterable[int],
                        decode: Callable[[list[int]], str], *, timeout_s: float = 5.0) -> dict[int, bool]:
    """Long-CoT truncation: {budget: is the trace correct when cut to its first `budget` tokens}, graded by
    math-verify (`grading.grade`). A trace no longer than a budget is graded whole. `decode` maps token ids to
    text (e.g. Tokenizer.decode with skip_special_tokens=True)."""
    return truncated_grades(token_ids, budgets, decode, lambda text: grading.grade(text, gold, timeout_s=timeout_s))


def truncated_grades(token_ids: Sequence[int], budgets: Iterable[int], decode: Callable[[list[int]], str],
                     grade: Callable[[str], bool]) -> dict[int, bool]:
    """{budget: grade(the text of the trace's first `budget` tokens)}; a trace no longer than a budget is graded
    whole, and each cut is decoded and graded once. Budgets must be >= 1 token."""
    token_ids = list(token_ids)
    graded: dict[int, bool] = {}  # by the number of tokens kept
    result: dict[int, bool] = {}
    for budget in budgets:
        if budget < 1:
            raise ValueError(f"truncation budgets must be >= 1 token, got {budget}")
        kept = min(budget, len(token_ids))
        if kept not in graded:
            graded[kept] = grade(decode(token_ids[:kept]))
        result[budget] = graded[kept]
    return result


def _powers_of_two_and_n(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    ks = [1 << i for i in range(n.bit_length()) if 1 << i <= n]
    return ks if ks[-1] == n else ks + [n]


_RECORD_KEYS = ("problem_id", "gold", "answer", "correct", "length")


def per_query_table(records: Iterable[Mapping[str, Any]], *, num_samples: int | None = None,
                    timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """One row per problem from per-sample records (the `kinetics_jax.eval.records` format: problem_id, gold,
    answer, correct, length, optional dataset, sample_index and num_samples), problems in order of first
    appearance:

        {"problem_id", "dataset", "gold", "n", "correct", "pass@1", "pass@2", ..., "pass@n",
         "maj@1", ..., "maj@n", "mean_length"}

    k runs over 1, 2, 4, ... and n. pass@k is the unbiased estimate from the records' `correct`; maj@k is
    `expected_majority_vote` (maj@n is the vote of all samples). mean_length is in generated tokens.

    n is checked, never guessed from a miscount: a problem's records must not repeat a sample_index, and when
    the sample count N is known (`num_samples`, else the records' num_samples field, which a problem's records
    must agree on) every problem must have exactly N records, so the columns stop at N. Anything else (a
    duplicated record, a missing sample) raises ValueError naming the problem. Without N, problems with
    different n have different columns."""
    if num_samples is not None and num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    by_problem: dict[str, list[Mapping[str, Any]]] = {}
    for number, record in enumerate(records):
        missing = [key for key in _RECORD_KEYS if key not in record]
        if missing:
            raise ValueError(f"record {number} lacks {missing} (needs {list(_RECORD_KEYS)})")
        by_problem.setdefault(str(record["problem_id"]), []).append(record)
    rows = []
    for problem_id, samples in by_problem.items():
        gold = samples[0]["gold"]
        if any(s["gold"] != gold for s in samples):
            raise ValueError(f"problem {problem_id!r}: records disagree on the gold answer")
        n = _sample_count(problem_id, samples, num_samples)
        correct = sum(bool(s["correct"]) for s in samples)
        answers = [s["answer"] for s in samples]
        ks = _powers_of_two_and_n(n)
        rows.append({
            "problem_id": problem_id, "dataset": samples[0].get("dataset"), "gold": gold, "n": n,
            "correct": correct,
            **{f"pass@{k}": pass_at_k(n, correct, k) for k in ks},
            **{f"maj@{k}": expected_majority_vote(answers, gold, k, timeout_s=timeout_s) for k in ks},
            "mean_length": sum(s["length"] for s in samples) / n,
        })
    return rows


def _sample_count(problem_id: str, samples: Sequence[Mapping[str, Any]], num_samples: int | None) -> int:
    """len(samples), after checking that no sample_index repeats and that it equals N: `num_samples` if given,
    else the samples' num_samples field (all equal) if they carry one."""
    seen: set[Any] = set()
    for s in samples:
        if "sample_index" in s:
            if s["sample_index"] in seen:
                raise ValueError(f"problem {problem_id!r}: sample {s['sample_index']} appears twice")
            seen.add(s["sample_index"])
    expected, source = num_samples, "num_samples"
    if expected is None:
        declared = {s["num_samples"] for s in samples if "num_samples" in s}
        if len(declared) > 1:
            raise ValueError(f"problem {problem_id!r}: records disagree on num_samples ({sorted(declared, key=repr)})")
        if declared:
            expected, source = declared.pop(), "its records' num_samples"
    if expected is not None and len(samples) != expected:
        raise ValueError(f"problem {problem_id!r} has {len(samples)} samples, but {source} is {expected}")
    return len(samples)
