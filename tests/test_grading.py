"""Tests of kinetics_jax/eval/grading.py: extraction, equivalence against math-verify, timeouts, threads."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time

import math_verify
import pytest

from kinetics_jax.eval import grading

K = r"Therefore, the final answer is: $\boxed{%s}$. I hope it is correct"

# (prediction text, gold, expected). All agree with math-verify on the raw text (see test_agrees_with_math_verify)
# except the ones listed in DEVIATIONS.
CASES = [
    # fractions and decimals
    (K % r"\frac{1}{2}", "0.5", True),
    (K % r"\dfrac{1}{2}", r"\frac12", True),
    (K % r"\tfrac{3}{4}", "0.75", True),
    (K % "1/2", r"\frac{1}{2}", True),
    (K % r"\frac{2}{4}", r"\frac{1}{2}", True),
    (K % r"\frac{1}{3}", "0.33", False),
    (K % "0.3333333", r"\frac{1}{3}", True),
    (K % r"\frac{1}{2}", r"\frac{1}{3}", False),
    # percent
    (K % r"50\%", "50", True),
    (K % "50", r"50\%", True),
    (K % "0.5", r"50\%", True),
    (K % r"25\%", r"30\%", False),
    # sets, tuples, intervals
    (K % r"\{2,1\}", r"\{1,2\}", True),
    (K % "2, 1", "1, 2", True),
    (K % r"\{1,2,3\}", r"\{1,2\}", False),
    (K % "(1,2]", "(1,2]", True),
    (K % "[1,2)", "(1,2]", False),
    (K % r"(-\infty, 3)", r"(-\infty,3)", True),
    (K % r"(3, \pi/2)", r"\left( 3, \frac{\pi}{2} \right)", True),
    # \text answers
    (K % r"\text{(C)}", "C", True),
    (K % r"\text{Evelyn}", r"\text{Evelyn}", True),
    (K % r"\text{Bob}", r"\text{Evelyn}", False),
    # AIME integers: leading zeros, decimals, separators, signs
    (K % "033", "33", True),
    (K % "33", "033", True),
    (K % "33.0", "33", True),
    (K % "34", "33", False),
    (K % "1,000", "1000", True),
    (K % "1{,}000", "1000", True),
    (K % "-3", "-3", True),
    (K % "-3", "3", False),
    # several boxes (the last wins), nested braces, spellings of the box
    (r"First $\boxed{12}$, then I fixed it: $\boxed{13}$.", "13", True),
    (r"First $\boxed{13}$, then I fixed it: $\boxed{12}$.", "13", False),
    (K % r"\frac{\sqrt{3}}{2}", r"\frac{\sqrt3}{2}", True),
    (K % r"\frac{1}{\frac{1}{2}+\frac{1}{2}}", "1", True),
    (r"\boxed{\boxed{5}}", "5", True),
    (r"The value is \boxed {7}.", "7", True),
    (r"The value is \fbox{7}.", "7", True),
    (r"$\boxed{5}$ and a box cut short: $\boxed{1", "5", True),
    (r"$\boxed{5}$ then an empty $\boxed{}$", "5", True),
    # no box
    ("Therefore, the final answer is: 42. I hope it is correct", "42", True),
    ("So the answer is 17.", "17", True),
    ("**Answer:** 17", "17", True),
    (r"The answer is $\frac{1}{2}$.", "0.5", True),
    ("I could not solve it.", "17", False),
    (r"An empty $\boxed{}$ and then 5", "5", False),
    # units
    (K % r"5\text{ cm}", "5", True),
    (K % r"5 \mbox{ meters}", "5", True),
    (K % r"90^\circ", "90", True),
    # negatives, roots, pi, expressions
    (K % r"-\frac{1}{2}", "-0.5", True),
    (K % r"2\sqrt{2}", r"\sqrt{8}", True),
    (K % r"\sqrt{2}", "1.41421356", True),
    (K % r"\sqrt{3}", r"\sqrt{2}", False),
    (K % r"2\pi", r"2\pi", True),
    (K % r"\pi", "3.14159265", True),
    (K % r"\frac{\pi}{2}", r"\pi", False),
    (K % "x = 5", "5", True),
    (K % "x^2+2x+1", "(x+1)^2", True),
    (K % "10^{10}", "10000000000", True),
    # Qwen3 thinking traces
    (r"<think>maybe \boxed{4}</think>The answer is \boxed{5}.", "5", True),
    (r"<think>I get \boxed{5}.</think>So, done.", "5", True),
    ("<think>so the answer is 5. Wait, let me check", "5", False),
    ("<think>x</think>Therefore, the final answer is: $12$. I hope it is correct", "12", True),
]

# Where we deliberately differ from math_verify.verify(parse("$gold$"), parse(prediction)), and why.
DEVIATIONS = {
    r"The value is \boxed {7}.": "\\boxed with a space is a box",
    r"The value is \fbox{7}.": "\\fbox is a box",
    r"An empty $\boxed{}$ and then 5": "no answer: a bare number in the text is not an answer",
    "<think>so the answer is 5. Wait, let me check": "text fallbacks never read an unterminated thinking block",
}


def test_enough_cases():
    assert len(CASES) >= 40
    assert set(DEVIATIONS) <= {prediction for prediction, _, _ in CASES}


@pytest.mark.parametrize("prediction,gold,expected", CASES)
def test_grade(prediction, gold, expected):
    assert grading.grade(prediction, gold) is expected


@pytest.mark.parametrize("prediction,gold,expected", CASES)
def test_agrees_with_math_verify(prediction, gold, expected):
    reference = math_verify.verify(math_verify.parse(f"${gold}$"), math_verify.parse(prediction))
    if prediction in DEVIATIONS:
        assert reference is not expected, f"no longer a deviation: {DEVIATIONS[prediction]}"
    else:
        assert reference is expected


@pytest.mark.parametrize("text,answer", [
    (K % r"\frac{a}{b^{2}}", r"\frac{a}{b^{2}}"),
    (r"$\boxed{\{1, 2\}}$", r"\{1, 2\}"),  # escaped braces do not close the box
    (r"\boxed{a} \boxed{b}", "b"),
    (r"\boxed{a} \boxed{b", "a"),  # the unterminated last box is skipped
    (r"\boxed { 7 }", "7"),
    (r"\fbox{x}", "x"),
    ("Therefore, the final answer is: $-2$. I hope it is correct", "-2"),
    ("Therefore, the final answer is: 3.5. I hope it is correct", "3.5"),
    ("The answer is 3.5.", "3.5"),
    ("Answer: x+1\n", "x+1"),
    ("the answer is 1. Later: the answer is 2.", "2"),
    ("<think>the answer is 4</think>\nAnswer: 6", "6"),
    (r"<think>the answer is 4, so \boxed{4}", "4"),  # a box inside an open thinking block still counts
    ("<think>the answer is 4", None),
    ("<think>a</think> no answer here", None),
    ("nothing", None),
    ("", None),
])
def test_extract_answer(text, answer):
    assert grading.extract_answer(text) == answer


def test_gold_written_as_box():
    assert grading.grade(K % "12", r"\boxed{12}")


def test_answers_equivalent_is_symmetric():
    for a, b in [("x=5", "5"), (r"\frac{1}{2}", "0.5"), ("033", "33"), (r"\{1,2\}", r"\{2,1\}")]:
        assert grading.answers_equivalent(a, b) and grading.answers_equivalent(b, a)
    assert not grading.answers_equivalent("4", "5")
    assert not grading.answers_equivalent(r"\frac{1}{2}", r"\frac{1}{3}")


def test_answer_is_correct():
    assert grading.answer_is_correct(r"\dfrac{1}{2}", "0.5")
    assert not grading.answer_is_correct(None, "0.5")


def test_easy_pairs_are_fast():
    grading.grade(K % r"\frac{1}{2}", "0.5")  # start a worker
    pairs = [(K % rf"\dfrac{{{i}}}{{{i + 3}}}", rf"\frac{{{i}}}{{{i + 3}}}") for i in range(1, 41)]
    start = time.perf_counter()
    assert all(grading.grade(prediction, gold) for prediction, gold in pairs)
    per_pair = (time.perf_counter() - start) / len(pairs)
    assert per_pair < 0.05, f"{per_pair * 1e3:.1f} ms per fraction pair"  # ~3 ms unloaded; slack for busy CPUs
    start = time.perf_counter()
    assert all(grading.grade(K % f"{i:03d}", str(i)) for i in range(1000))  # integers never reach math-verify
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("answer", [
    "9^{9^{9^{9^9}}}",  # sympy evaluates the power: minutes in one C-level big-int pow
    "(" * 3000 + "1" + ")" * 3000,  # the LaTeX parser stalls
])
def test_pathological_input_times_out(answer, caplog):
    grading.grade(K % "1", "1.0")  # a warm worker, so the wall clock below measures the timeout alone
    with caplog.at_level(logging.WARNING, logger=grading.__name__):
        start = time.perf_counter()
        assert grading.grade(K % answer, "5", timeout_s=1.0) is False
        elapsed = time.perf_counter() - start
    assert elapsed < 4.0, elapsed
    assert "timed out" in caplog.text and "counted as wrong" in caplog.text
    # A timed-out pair is remembered: asking again costs nothing (and a shorter timeout cannot succeed either).
    start = time.perf_counter()
    assert grading.grade(K % answer, "5", timeout_s=0.5) is False
    assert time.perf_counter() - start < 0.1
    assert grading.grade(K % r"\frac{1}{2}", "0.5")  # a fresh worker takes over


def test_threads():
    """grade works off the main thread (math-verify's signal timeouts would not), concurrently, with a timeout."""
    jobs = [(K % rf"\sqrt{{{2 * i * i}}}", rf"{i}\sqrt{{2}}", True) for i in range(1, 7)]
    jobs += [(K % "9^{9^{9^{9^{10}}}}", "3", False), (K % r"\frac{7}{3}", "2.5", False)]
    assert threading.current_thread() is threading.main_thread()
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(grading.grade, prediction, gold, timeout_s=2.0) for prediction, gold, _ in jobs]
        assert [f.result(timeout=60) for f in futures] == [expected for _, _, expected in jobs]
