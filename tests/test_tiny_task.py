"""The pointer-chasing task: generator and checker against an independent walk of the parsed prompt text."""

from __future__ import annotations

import numpy as np
import pytest

import kinetics_jax as kj
from kinetics_jax.tiny import task


def _walk_from_text(prompt: str) -> tuple[list[int], int]:
    """Parses the prompt text alone (no Problem fields) and walks it: (visited nodes, hops)."""
    words = prompt.split()
    edges = {}
    body = words[2:words.index("question")]
    for i in range(0, len(body), 3):
        source, target, sep = body[i:i + 3]
        assert source.startswith("v") and target.startswith("w") and sep == ";"
        assert source not in edges  # every node has one successor
        edges[source] = "v" + target[1:]
    start, hops = words[words.index("start") + 1], int(words[words.index("hops") + 1])
    nodes = [start]
    for _ in range(hops):
        nodes.append(edges[nodes[-1]])
    return [int(n[1:]) for n in nodes], hops


@pytest.mark.parametrize("index", range(50))
def test_problem_is_a_single_cycle_and_solution_walks_it(index):
    problem = task.make_problem(7, index)
    nodes, hops = _walk_from_text(problem.prompt())
    assert task.MIN_HOPS <= hops <= task.MAX_HOPS and len(set(nodes)) == hops + 1  # no node visited twice
    order = [problem.start]  # one cycle through all nodes
    for _ in range(task.NODES - 1):
        order.append(problem.successor[order[-1]])
    assert sorted(order) == list(range(task.NODES)) and problem.successor[order[-1]] == problem.start
    solution = problem.solution().split()
    assert solution[-4:] == ["answer", f"v{nodes[-2]}", f"v{nodes[-1]}", task.EOS]
    for i in range(hops):
        assert solution[4 * i:4 * i + 4] == [str(i + 1), f"v{nodes[i]}", f"w{nodes[i + 1]}", ";"]
    assert len(task.encode(problem.prompt())) == task.PROMPT_TOKENS
    assert 100 <= len(solution) <= task.MAX_TOKENS - task.PROMPT_TOKENS  # a chain of thought of 100+ tokens
    assert task.check(problem.solution(), problem)


@pytest.mark.parametrize("index", range(30))
@pytest.mark.parametrize("short", [True, False])
def test_training_graphs_are_cycles_over_their_nodes(index, short):
    problem = task.training_problem(5, index, short)
    nodes, hops = _walk_from_text(problem.prompt())
    used = [i for i in range(task.NODES) if problem.successor[i] >= 0]
    lo, hi = (task.SHORT_NODES if short else (task.SHORT_NODES[1] + 1, task.NODES))
    assert lo <= len(used) <= hi and len(set(nodes)) == hops + 1 and hops < len(used)
    assert len(task.encode(problem.prompt())) == 3 * len(used) + 10
    assert len(task.encode(problem.prompt() + " " + problem.solution())) <= (task.SHORT_TOKENS if short
                                                                             else task.MAX_TOKENS)
    assert task.check(problem.solution(), problem)


def test_a_quarter_of_the_steps_are_long():
    long = 1 - np.mean([task.is_short_step(0, s) for s in range(4000)])
    assert abs(long - 0.25) < 0.03  # binomial sd sqrt(0.25 * 0.75 / 4000) = 0.007


def test_bad_problem_sizes_are_refused():
    with pytest.raises(ValueError, match="nodes"):
        task.make_problem(0, 0, nodes=40)
    with pytest.raises(ValueError, match="hops"):
        task.make_problem(0, 0, nodes=8, hops=(3, 8))


def test_generation_is_reproducible_and_seeds_differ():
    assert task.make_problem(0, 5) == task.make_problem(0, 5)
    assert task.make_problem(0, 5) != task.make_problem(1, 5)
    assert task.make_problem(0, 5) != task.make_problem(0, 6)


def test_checker_is_exact():
    problem = task.make_problem(3, 0)
    nodes, _ = _walk_from_text(problem.prompt())
    right = f"v{nodes[-2]} v{nodes[-1]}"
    assert task.check(f"1 v0 w1 ; answer {right}", problem)
    assert task.check(f"answer v1 v2 ; answer {right}", problem)  # the last answer counts
    assert not task.check(f"answer v{nodes[-1]} v{nodes[-2]}", problem)  # order matters
    assert not task.check(f"answer v{nodes[-2]}", problem)
    assert not task.check("1 v0 w1 ; 2 v1 w2", problem)  # truncated: no answer
    wrong = (nodes[-1] + 1) % task.NODES
    assert not task.check(f"answer v{nodes[-2]} v{wrong}", problem)
    assert task.extract_answer(f"answer v{nodes[-2]} v{nodes[-1]}1") is None or not task.check(
        f"answer v{nodes[-2]} v{nodes[-1]}1", problem)


def test_chance_is_below_one_percent():
    assert task.CHANCE == pytest.approx(1 / (32 * 31)) and task.CHANCE < 0.01
    # Uniform random guesses over ordered pairs of nodes hit at about that rate.
    rng = np.random.default_rng(0)
    problems = [task.make_problem(2, i) for i in range(200)]
    hits = sum(task.check(f"answer v{a} v{b}", p) for p in problems
               for a, b in rng.integers(task.NODES, size=(50, 2)))
    assert hits / (200 * 50) < 0.01


@pytest.mark.parametrize("short", [True, False])
def test_training_batch_masks_only_the_solution(short):
    step = next(s for s in range(100) if task.is_short_step(0, s) == short)
    tokens, mask = task.training_batch(0, step, 4)
    rows, width = (4 * task.SHORT_PER_LONG, task.SHORT_TOKENS) if short else (4, task.MAX_TOKENS)
    assert tokens.shape == mask.shape == (rows, width)
    for b in range(rows):
        problem = task.training_problem(0, step * 4 * task.SHORT_PER_LONG + b, short)
        ids = task.encode(problem.prompt()) + task.encode(problem.solution())
        np.testing.assert_array_equal(tokens[b, :len(ids)], ids)
        assert (tokens[b, len(ids):] == task.TOKEN_ID[task.PAD]).all()
        targets = tokens[b, 1:][mask[b, :-1] > 0]
        np.testing.assert_array_equal(targets, task.encode(problem.solution()))


def test_tokenizer_files_match_the_task_encoding(tmp_path):
    task.write_tokenizer(str(tmp_path))
    tokenizer = kj.Tokenizer.from_dir(tmp_path)
    problem = task.make_problem(4, 2)
    text = problem.prompt() + " " + problem.solution()
    assert tokenizer.encode(text) == task.encode(text)
    assert tokenizer.eos_token_ids == (task.TOKEN_ID[task.EOS],) and tokenizer.vocab_size == len(task.VOCAB)
    assert tokenizer.decode(task.encode(problem.solution()), skip_special_tokens=True) == task.decode(
        task.encode(problem.solution()))
    with pytest.raises(ValueError, match="'v99' is not a token"):
        task.encode("v99")
