"""Tests of kinetics_jax/eval/datasets.py: HF field spellings in jsonl and parquet, GSM8K answers, errors,
the Kinetics prompt."""

from __future__ import annotations

import json
import os

import pyarrow
import pyarrow.parquet
import pytest

import kinetics_jax
from kinetics_jax.eval import datasets, grading
from kinetics_jax.tokenizer import Tokenizer

TINY_MODEL = os.path.join(os.path.dirname(kinetics_jax.__file__), "assets", "tiny-random-qwen3")


def _write(tmp_path, rows: list[dict], fmt: str) -> str:
    path = str(tmp_path / f"data.{fmt}")
    if fmt == "jsonl":
        with open(path, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    else:
        pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)
    return path


# (dataset, rows as a Hugging Face copy spells them, expected (id, problem, answer, solution) per row)
SPELLINGS = [
    ("aime24", [{"id": 60, "problem": "P1", "solution": "S1", "answer": "204", "url": "u", "year": 2024}],
     [("60", "P1", "204", "S1")]),
    ("aime24", [{"ID": "2024-I-1", "Problem": "P1", "Solution": "S1", "Answer": 33}],
     [("2024-I-1", "P1", "33", "S1")]),
    ("aime25", [{"question": "Q1", "answer": "70"}, {"question": "Q2", "answer": "588"}],
     [("aime25-0", "Q1", "70", None), ("aime25-1", "Q2", "588", None)]),
    ("aime25", [{"id": "0", "problem": "P", "solution": "S", "answer": "70", "url": "u"}],
     [("0", "P", "70", "S")]),
    ("math500", [{"problem": "P", "solution": "S", "answer": r"\frac{14}{3}", "subject": "Algebra", "level": 4,
                  "unique_id": "test/algebra/1.json"}],
     [("test/algebra/1.json", "P", r"\frac{14}{3}", "S")]),
    ("amc23", [{"id": 3, "question": "Q", "answer": 27.0, "url": "u"}], [("3", "Q", "27", None)]),
    ("amc23", [{"problem": "P", "answer": "1.5"}], [("amc23-0", "P", "1.5", None)]),
    ("gsm8k", [{"question": "Q1", "answer": "She pays 2 * 3 = <<2*3=6>>6.\n#### 6"},
               {"question": "Q2", "answer": "Total 1,234 + 1 = 1,235\n#### 1,235"},
               {"question": "Q3", "answer": "Lost 4.\n#### -4"}],
     [("gsm8k-0", "Q1", "6", "She pays 2 * 3 = <<2*3=6>>6."), ("gsm8k-1", "Q2", "1235", "Total 1,234 + 1 = 1,235"),
      ("gsm8k-2", "Q3", "-4", "Lost 4.")]),
]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
@pytest.mark.parametrize("dataset,rows,expected", SPELLINGS)
def test_field_spellings(tmp_path, fmt, dataset, rows, expected):
    problems = datasets.load_problems(_write(tmp_path, rows, fmt), dataset)
    assert [(p.id, p.problem, p.answer, p.solution) for p in problems] == expected
    assert all(p.dataset == dataset for p in problems)


def test_every_dataset_name_is_covered():
    assert {dataset for dataset, _, _ in SPELLINGS} == set(datasets.DATASETS)


def test_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"problem": "P", "answer": "1"}\n\n{"problem": "Q", "answer": "2"}\n')
    assert [p.id for p in datasets.load_problems(str(path), "aime24")] == ["aime24-0", "aime24-1"]


def test_problem_is_frozen(tmp_path):
    problem = datasets.load_problems(_write(tmp_path, [{"problem": "P", "answer": "1"}], "jsonl"), "aime24")[0]
    with pytest.raises(AttributeError):
        problem.answer = "2"


@pytest.mark.parametrize("dataset,rows,fmt,message", [
    ("aime24", [{"problem": "P", "answer": "1"}, {"problem": "Q"}], "jsonl",
     r"data.jsonl:2: missing field 'answer' / 'Answer'"),
    ("math500", [{"question": "P", "answer": "1"}], "parquet", r"data.parquet row 0: missing field 'problem'"),
    ("gsm8k", [{"question": "Q", "answer": "no marker 5"}], "jsonl", r"data.jsonl:1: .*'####"),
    ("gsm8k", [{"question": "Q", "answer": "x\n####  "}], "jsonl", r"data.jsonl:1: .*nothing after"),
    ("amc23", [{"id": 1, "question": "Q", "answer": "1"}, {"id": 1, "question": "R", "answer": "2"}], "jsonl",
     r"data.jsonl:2: duplicate id '1' \(first at .*data.jsonl:1\)"),
    ("aime24", [], "jsonl", "no problems"),
])
def test_errors(tmp_path, dataset, rows, fmt, message):
    with pytest.raises(ValueError, match=message):
        datasets.load_problems(_write(tmp_path, rows, fmt), dataset)


def test_file_errors(tmp_path):
    path = _write(tmp_path, [{"problem": "P", "answer": "1"}], "jsonl")
    with pytest.raises(ValueError, match="unknown dataset 'aime26'.*aime24"):
        datasets.load_problems(path, "aime26")
    with pytest.raises(ValueError, match="no such file"):
        datasets.load_problems(str(tmp_path / "missing.jsonl"), "aime24")
    csv = tmp_path / "data.csv"
    csv.write_text("problem,answer\nP,1\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        datasets.load_problems(str(csv), "aime24")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "P", "answer": "1"}\n{"problem": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        datasets.load_problems(str(bad), "aime24")
    bad.write_text('["P", "1"]\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: expected a JSON object"):
        datasets.load_problems(str(bad), "aime24")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="cannot read parquet"):
        datasets.load_problems(str(broken), "aime24")


def test_kinetics_prompt():
    prompt = datasets.kinetics_prompt("What is 1+1?")
    assert "Therefore, the final answer is: $\\boxed{ANSWER}$. I hope it is correct" in prompt
    assert prompt.endswith("What is 1+1?")
    assert "step by step" in prompt
    # A model that follows the template is graded right.
    assert grading.grade(datasets.FINAL_ANSWER_TEMPLATE.replace("ANSWER", "2"), "2")


def test_prompt_ids_use_the_chat_template():
    tokenizer = Tokenizer.from_dir(TINY_MODEL)
    problem = datasets.Problem(id="0", problem="What is 1+1?", answer="2", solution=None, dataset="aime24")
    messages = [{"role": "user", "content": datasets.kinetics_prompt(problem.problem)}]
    thinking = datasets.prompt_ids(problem, tokenizer)
    assert thinking == tokenizer.apply_chat_template(messages, enable_thinking=True)
    assert tokenizer.decode(thinking).endswith("<|im_start|>assistant\n")
    plain = datasets.prompt_ids(problem, tokenizer, enable_thinking=False)
    assert plain == tokenizer.apply_chat_template(messages, enable_thinking=False)
    assert tokenizer.decode(plain).endswith("<think>\n\n</think>\n\n")


def test_prompt_ids_without_a_template():
    class PlainTokenizer:
        has_chat_template = False

        def encode(self, text: str) -> list[int]:
            return [ord(c) for c in text]

    problem = datasets.Problem(id="0", problem="2+2?", answer="4", solution=None, dataset="gsm8k")
    ids = datasets.prompt_ids(problem, PlainTokenizer())
    assert "".join(map(chr, ids)) == datasets.kinetics_prompt("2+2?")
