"""Benchmark problems from local files, read with the Hugging Face datasets' field names, and the Kinetics prompt.

    problems = load_problems("data/aime24.parquet", "aime24")
    ids = prompt_ids(problems[0], tokenizer)               # chat template, generation prompt, thinking on

Files are .jsonl (one JSON object per line; blank lines skipped) or .parquet (read with pyarrow). Per dataset,
each Problem field is read from the first present of these columns (the spellings of the usual HF copies):

    dataset  problem                       answer            solution             id
    aime24   problem, Problem, question    answer, Answer    solution, Solution   id, ID
    aime25   problem, Problem, question    answer, Answer    solution, Solution   id, ID
    math500  problem                       answer            solution             unique_id
    amc23    question, problem             answer            solution             id
    gsm8k    question                      answer (*)        -                    -

(*) GSM8K's "answer" holds the worked solution, then "#### <number>": the gold answer is the number (thousands
separators removed) and the text before "####" becomes `solution`.

Answers stored as numbers (AIME parquet copies hold int64) become strings ("33", never "33.0"). A problem
without an id column gets f"{dataset}-{index}" (0-based index in the file). Duplicate ids, missing fields,
unknown dataset names and unreadable files raise ValueError naming the file, the line (jsonl) or row (parquet),
and the field.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterator

@dataclasses.dataclass(frozen=True)
class Problem:
    """One benchmark problem. `answer` is the gold answer as text (LaTeX or a number)."""

    id: str
    problem: str
    answer: str
    solution: str | None
    dataset: str


@dataclasses.dataclass(frozen=True)
class _Fields:
    """Column names, in order of preference, for each Problem field of one dataset."""

    problem: tuple[str, ...]
    answer: tuple[str, ...]
    solution: tuple[str, ...] = ()
    id: tuple[str, ...] = ()


_AIME = _Fields(problem=("problem", "Problem", "question"), answer=("answer", "Answer"),
                solution=("solution", "Solution"), id=("id", "ID"))
_FIELDS: dict[str, _Fields] = {
    "aime24": _AIME,
    "aime25": _AIME,
    "math500": _Fields(problem=("problem",), answer=("answer",), solution=("solution",), id=("unique_id",)),
    "amc23": _Fields(problem=("question", "problem"), answer=("answer",), solution=("solution",), id=("id",)),
    "gsm8k": _Fields(problem=("question",), answer=("answer",)),
}
DATASETS: tuple[str, ...] = tuple(_FIELDS)


def _rows(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location for error messages, row) for every record of a .jsonl or .parquet file."""
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{number}: not valid JSON ({e})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
                yield f"{path}:{number}", row
    elif path.endswith(".parquet"):
        import pyarrow.parquet

        try:
            table = pyarrow.parquet.read_table(path)
        except pyarrow.ArrowException as e:
            raise ValueError(f"{path}: cannot read parquet ({e})") from None
        for number, row in enumerate(table.to_pylist()):
            yield f"{path} row {number}", row
    else:
        raise ValueError(f"{path}: unsupported file type (expected .jsonl or .parquet)")


def _text(value: Any) -> str:
    """A cell as text: numbers without a spurious ".0" (33.0 -> "33")."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _field(row: dict[str, Any], names: tuple[str, ...], where: str, *, required: bool) -> str | None:
    for name in names:
        if row.get(name) is not None:
            return _text(row[name])
    if required:
        raise ValueError(f"{where}: missing field {' / '.join(repr(n) for n in names)} "
                         f"(the record has {sorted(row)})")
    return None


def _gsm8k_answer(answer: str, where: str) -> tuple[str, str]:
    """(gold number, worked solution) of a GSM8K answer "...reasoning...\\n#### 1,234"."""
    if "####" not in answer:
        raise ValueError(f"{where}: field 'answer' has no '#### <number>' line (GSM8K format)")
    solution, _, gold = answer.rpartition("####")
    gold = gold.strip().replace(",", "")
    if not gold:
        raise ValueError(f"{where}: field 'answer' has nothing after '####'")
    return gold, solution.strip()


def load_problems(path: str, dataset: str) -> list[Problem]:
    """The problems of a local .jsonl or .parquet file, read with `dataset`'s field names (see the module
    docstring), in file order."""
    if dataset not in _FIELDS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file")
    fields = _FIELDS[dataset]
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for index, (where, row) in enumerate(_rows(path)):
        answer = _field(row, fields.answer, where, required=True)
        solution = _field(row, fields.solution, where, required=False)
        if dataset == "gsm8k":
            answer, solution = _gsm8k_answer(answer, where)
        problem_id = _field(row, fields.id, where, required=False) or f"{dataset}-{index}"
        if problem_id in seen:
            raise ValueError(f"{where}: duplicate id {problem_id!r} (first at {seen[problem_id]})")
        seen[problem_id] = where
        problems.append(Problem(id=problem_id, problem=_field(row, fields.problem, where, required=True),
                                answer=answer.strip(), solution=solution, dataset=dataset))
    if not problems:
        raise ValueError(f"{path}: no problems")
    return problems


FINAL_ANSWER_TEMPLATE = r"Therefore, the final answer is: $\boxed{ANSWER}$. I hope it is correct"


def kinetics_prompt(problem: str) -> str:
    """The user turn of the Kinetics evaluation: a step-by-step solution ending in the final-answer sentence
    that `grading.extract_answer` looks for."""
    return (
        "Solve the following math problem step by step, showing your reasoning clearly and concisely. "
        f"Finish your response with a last line of exactly this form: '{FINAL_ANSWER_TEMPLATE}' (without the "
        "quotes), where ANSWER is only the final number or expression that answers the problem.\n\n"
        f"{problem}"
    )


def prompt_ids(problem: Problem, tokenizer: Any, *, enable_thinking: bool = True) -> list[int]:
    """The prompt token ids of one problem: the Kinetics user turn in the tokenizer's chat template with the
    generation prompt (Qwen3 thinking on by default), or the plain encoded text for a tokenizer without a
    template. `tokenizer` is a `kinetics_jax.Tokenizer` (or anything with has_chat_template,
    apply_chat_template and encode)."""
    text = kinetics_prompt(problem.problem)
    if tokenizer.has_chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], enable_thinking=enable_thinking)
    return tokenizer.encode(text)
