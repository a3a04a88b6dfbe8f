"""Tests of kinetics_jax/eval/metrics.py against brute-force enumeration of k-subsets."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kinetics_jax.eval import metrics


def _brute_pass_at_k(n: int, c: int, k: int) -> float:
    """The fraction of k-subsets of n samples (the first c correct) holding a correct sample."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_brute_force():
    for n in range(1, 11):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert metrics.pass_at_k(n, c, k) == pytest.approx(_brute_pass_at_k(n, c, k), abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 200).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_exact_formula(nck):
    n, c, k = nck
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    value = metrics.pass_at_k(n, c, k)
    assert value == float(exact)  # exact arithmetic, rounded once
    assert 0.0 <= value <= 1.0


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 9).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_hypothesis_brute_force(nck):
    assert metrics.pass_at_k(*nck) == pytest.approx(_brute_pass_at_k(*nck), abs=1e-12)


def test_pass_at_k_edges():
    assert metrics.pass_at_k(32, 0, 32) == 0.0
    assert metrics.pass_at_k(32, 1, 32) == 1.0  # n - c < k: exactly 1
    assert metrics.pass_at_k(32, 32, 1) == 1.0
    assert metrics.pass_at_k(32, 8, 1) == 0.25
    assert all(metrics.pass_at_k(n, c, 1) == c / n for n in range(1, 40) for c in range(n + 1))
    assert metrics.pass_at_k(10_000, 1, 1) == pytest.approx(1e-4, rel=1e-12)  # no cancellation for tiny values
    for n, c, k in [(4, 1, 5), (4, 5, 1), (4, -1, 1), (4, 1, 0), (0, 0, 1)]:
        with pytest.raises(ValueError):
            metrics.pass_at_k(n, c, k)


def test_majority_vote_groups_equivalent_spellings():
    answers = [r"\frac{1}{2}", "3", "0.5", "3", r"\dfrac12"]
    assert metrics.majority_vote(answers, "1/2", 5) == 1.0  # {1/2: 3 spellings} beats {3: 2}
    assert metrics.majority_vote(answers, "3", 5) == 0.0
    assert metrics.majority_vote(answers, "3", 4) == 0.0  # first 4: tie 2-2, the class seen first (1/2) wins
    assert metrics.majority_vote(answers, "3", 2) == 0.0  # tie 1-1: 1/2 seen first
    assert metrics.majority_vote(answers[1:], "3", 2) == 1.0


def test_majority_vote_abstentions():
    assert metrics.majority_vote([None, None, "7"], "7", 3) == 1.0  # samples without an answer do not vote
    assert metrics.majority_vote([None, None, "7"], "7", 2) == 0.0  # no answer among the first 2
    assert metrics.majority_vote(["007", "7", "8"], "7", 3) == 1.0  # AIME leading zeros are one class
    with pytest.raises(ValueError):
        metrics.majority_vote(["1"], "1", 2)


def _brute_expected_majority(answers: list[str | None], gold: str, k: int) -> float:
    """Enumerates every k-subset; answers are integer strings, so classes are their integer values."""
    total = Fraction(0)
    subsets = list(itertools.combinations(answers, k))
    for subset in subsets:
        counts: dict[int, int] = {}
        for answer in subset:
            if answer is not None:
                counts[int(answer)] = counts.get(int(answer), 0) + 1
        if counts:
            top = max(counts.values())
            winners = [value for value, count in counts.items() if count == top]
            total += Fraction(sum(value == int(gold) for value in winners), len(winners))
    return float(total / len(subsets))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from(["1", "01", "2", "3", "4", None]), min_size=1, max_size=9), st.data())
def test_expected_majority_vote_brute_force(answers, data):
    k = data.draw(st.integers(1, len(answers)))
    expected = _brute_expected_majority(answers, "1", k)
    assert metrics.expected_majority_vote(answers, "1", k) == pytest.approx(expected, abs=1e-12)


def test_expected_majority_vote():
    answers = [r"\frac{1}{2}", "0.5", "1", None]
    # subsets of 2: {1/2, 0.5} wins; {1/2, 1}, {0.5, 1} tie (half); {1/2, -}, {0.5, -} win; {1, -} loses.
    assert metrics.expected_majority_vote(answers, "1/2", 2) == pytest.approx(4 / 6)
    assert metrics.expected_majority_vote(answers, "1/2", 1) == pytest.approx(2 / 4)  # = pass@1
    assert metrics.expected_majority_vote(answers, "1/2", 4) == 1.0
    assert metrics.expected_majority_vote(["2", "3", "2"], "2", 3) == metrics.majority_vote(["2", "3", "2"], "2", 3)


def test_truncation_accuracy():
    trace = list(r"<think>hmm \boxed{4}, wait</think>So \boxed{5}.")  # one token per character
    decode = "".join
    first_box = len(r"<think>hmm \boxed{4}")
    result = metrics.truncation_accuracy(trace, "4", [5, first_box, len(trace) - 3, 10_000], decode)
    assert result == {5: False, first_box: True, len(trace) - 3: True, 10_000: False}
    assert metrics.truncation_accuracy(trace, "5", [10_000, len(trace)], decode) == {10_000: True, len(trace): True}
    with pytest.raises(ValueError):
        metrics.truncation_accuracy(trace, "5", [0], decode)


def test_truncation_accuracy_decodes_each_length_once():
    calls: list[int] = []

    def decode(ids: list[int]) -> str:
        calls.append(len(ids))
        return "".join(map(chr, ids))

    trace = [ord(c) for c in r"\boxed{3}"]
    assert metrics.truncation_accuracy(trace, "3", [64, 128, 256], decode) == {64: True, 128: True, 256: True}
    assert calls == [len(trace)]


def test_per_query_table():
    records = [{"problem_id": "a", "dataset": "aime24", "gold": "33", "answer": answer, "correct": answer == "33",
                "length": length} for answer, length in [("33", 100), ("12", 300), ("033", 200)]]
    records[2]["correct"] = True  # "033" is correct
    records += [{"problem_id": "b", "gold": "1", "answer": None, "correct": False, "length": 50}]
    rows = metrics.per_query_table(records)
    assert [row["problem_id"] for row in rows] == ["a", "b"]
    a, b = rows
    assert a["n"] == 3 and a["correct"] == 2 and a["dataset"] == "aime24" and a["mean_length"] == 200.0
    assert set(a) == {"problem_id", "dataset", "gold", "n", "correct", "pass@1", "pass@2", "pass@3", "maj@1",
                      "maj@2", "maj@3", "mean_length"}
    assert a["pass@1"] == pytest.approx(2 / 3) and a["pass@2"] == 1.0
    assert a["maj@1"] == pytest.approx(2 / 3) and a["maj@3"] == 1.0
    assert a["maj@2"] == pytest.approx(1.0 / 3 + 2.0 / 3 * 0.5)  # {33, 033} wins; the two ties are split
    assert b == {"problem_id": "b", "dataset": None, "gold": "1", "n": 1, "correct": 0, "pass@1": 0.0, "maj@1": 0.0,
                 "mean_length": 50.0}
    with pytest.raises(ValueError, match="lacks"):
        metrics.per_query_table([{"problem_id": "a"}])
    with pytest.raises(ValueError, match="disagree"):
        metrics.per_query_table([records[0], {**records[1], "gold": "34"}])


def _problem(problem: str, n: int, **fields) -> list[dict]:
    return [{"problem_id": problem, "gold": "1", "answer": "1", "correct": s == 0, "length": 10, "sample_index": s,
             "num_samples": n, **fields} for s in range(n)]


def test_per_query_table_refuses_a_duplicated_record():
    records = _problem("aime-3", 3) + _problem("aime-4", 3)
    assert [row["n"] for row in metrics.per_query_table(records)] == [3, 3]
    with pytest.raises(ValueError, match=r"problem 'aime-3': sample 2 appears twice"):
        metrics.per_query_table(records + records[2:3])  # a copied line: without the check, n 4 and pass@4


def test_per_query_table_checks_the_sample_count_against_n():
    records = _problem("a", 3)
    no_index = [{k: v for k, v in r.items() if k != "sample_index"} for r in records]
    with pytest.raises(ValueError, match=r"problem 'a' has 4 samples, but its records' num_samples is 3"):
        metrics.per_query_table(no_index + no_index[:1])
    with pytest.raises(ValueError, match=r"problem 'a' has 2 samples, but its records' num_samples is 3"):
        metrics.per_query_table(records[:2])
    with pytest.raises(ValueError, match=r"problem 'a': records disagree on num_samples \(\[3, 4\]\)"):
        metrics.per_query_table(records[:2] + [{**records[2], "num_samples": 4}])
    bare = [{k: v for k, v in r.items() if k not in ("sample_index", "num_samples")} for r in records]
    with pytest.raises(ValueError, match=r"problem 'a' has 4 samples, but num_samples is 3"):
        metrics.per_query_table(bare + bare[:1], num_samples=3)  # the configured N, where records lack it
    row, = metrics.per_query_table(bare, num_samples=3)
    assert row["n"] == 3 and "pass@3" in row and "pass@4" not in row
    assert metrics.per_query_table(bare + bare[:1])[0]["n"] == 4  # neither N nor sample_index: taken as given
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        metrics.per_query_table(bare, num_samples=0)


def test_powers_of_two_and_n():
    assert metrics._powers_of_two_and_n(1) == [1]
    assert metrics._powers_of_two_and_n(8) == [1, 2, 4, 8]
    assert metrics._powers_of_two_and_n(12) == [1, 2, 4, 8, 12]
