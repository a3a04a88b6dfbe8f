"""The results record: its schema, the one builder of records, and what its truncation field means.

A record (built by `sample_record` for scripts/evaluate.py and the study, by `make_record` for released traces;
stored by kinetics_jax.eval.results; read by the scaling analysis) is one JSON object per (problem, sample):

    model, model_config (HF config.json dict), dataset, problem_id, gold, sample_index, num_samples,
    prompt_length, length (generated tokens), finish_reason, text, token_ids, answer (extracted or null),
    correct, truncation {"<token budget>": correct when the trace is cut there}, cost {compute_flops,
    memory_bytes, eflops, hardware: this sample's share, tts_cost(N samples of its length) / N}, config (the
    run: checkpoint, dataset, strategy, num_samples, max_new_tokens, attention, sampling, seed)

`REQUIRED_FIELDS` are those every writer emits and the readers rely on (model, model_config, dataset,
problem_id, gold, sample_index, num_samples, prompt_length, length, answer, correct, config), with their JSON
types; `OPTIONAL_FIELDS` (finish_reason, text, token_ids, truncation, cost) are type-checked when present; other
fields are kept as they are. sample_index, num_samples, prompt_length and length are integers (not booleans)
with 0 <= sample_index < num_samples and lengths >= 0; correct is a boolean; answer is a string or null.
`record_problem` says why a parsed value breaks these rules.

Truncation (long CoT, see docs/evaluation.md). A trace is re-graded at each token budget B *below its length*:
truncation[B] is whether its first B tokens hold a correct final answer. A trace of at most B tokens ended within
the budget, so cutting it there changes nothing: the record holds no entry for such a B, and its truncated
answer is its final one (`correct`). `correct_within` is the one reading of that rule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from kinetics_jax.cost.analytic import tts_cost
from kinetics_jax.eval import grading, metrics

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

    from kinetics_jax.policies import AttentionConfig
    from kinetics_jax.config import Qwen3Config
    from kinetics_jax.tokenizer import Tokenizer

# Field -> its allowed JSON types (as Python types after json.loads). int excludes bool (checked below).
REQUIRED_FIELDS: Mapping[str, tuple[type, ...]] = {
    "model": (str,), "model_config": (dict,), "dataset": (str,), "problem_id": (str,), "gold": (str,),
    "sample_index": (int,), "num_samples": (int,), "prompt_length": (int,), "length": (int,),
    "answer": (str, type(None)), "correct": (bool,), "config": (dict,),
}
OPTIONAL_FIELDS: Mapping[str, tuple[type, ...]] = {
    "finish_reason": (str,), "text": (str,), "token_ids": (list,), "truncation": (dict,), "cost": (dict,),
}
_REQUIRED, _OPTIONAL = tuple(REQUIRED_FIELDS.items()), tuple(OPTIONAL_FIELDS.items())
_MISSING = object()
_JSON_NAMES = {dict: "an object", list: "an array", str: "a string", int: "an integer", float: "a number",
               bool: "a boolean", type(None): "null"}


def _json_name(value: Any) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


def _field_problem(name: str, value: Any, types: tuple[type, ...]) -> str | None:
    """Why `value` is not a valid `name` field of one of `types`, or None. Booleans are not integers."""
    if isinstance(value, types) and not (isinstance(value, bool) and bool not in types):
        return None
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return (f"field {name!r} must be {' or '.join(_JSON_NAMES[t] for t in types)}, got {shown} "
            f"({_json_name(value)})")


def record_problem(record: Any) -> str | None:
    """Why a parsed JSON value is not a valid record (the rules of the module docstring), or None if it is one.
    One dict look-up and type test per field (exact builtin types first, as json.loads makes them): cheap
    enough for every line of a large file."""
    if not isinstance(record, dict):
        return f"not a record: {_json_name(record)}, not a JSON object"
    for name, types in _REQUIRED:
        value = record.get(name, _MISSING)
        if type(value) not in types:
            if value is _MISSING:
                missing = [field for field in REQUIRED_FIELDS if field not in record]
                return f"record lacks field(s) {', '.join(missing)}"
            problem = _field_problem(name, value, types)
            if problem:
                return problem
    for name, types in _OPTIONAL:
        value = record.get(name, _MISSING)
        if value is not _MISSING and type(value) not in types:
            problem = _field_problem(name, value, types)
            if problem:
                return problem
    if record["num_samples"] < 1:
        return f"field 'num_samples' must be >= 1, got {record['num_samples']}"
    if not 0 <= record["sample_index"] < record["num_samples"]:
        return (f"field 'sample_index' must be in [0, num_samples={record['num_samples']}), got "
                f"{record['sample_index']}")
    for name in ("prompt_length", "length"):
        if record[name] < 0:
            return f"field {name!r} must be >= 0, got {record[name]}"
    return None


def correct_within(budget: int, *, length: int, correct: bool, truncation: Mapping[int, bool]) -> bool | None:
    """Is a trace of `length` tokens correct when cut to its first `budget` tokens (the truncation rule of the
    module docstring)? Its final `correct` when length <= budget (it ended within the budget, whatever the
    record's truncation holds), else truncation[budget]; None when the record holds no entry for that budget."""
    if length <= budget:
        return correct
    return truncation.get(budget)


def math_verdict(text: str, gold: str) -> tuple[str | None, bool]:
    """(the extracted final answer of `text`, whether it is equivalent to `gold`): math-verify grading."""
    answer = grading.extract_answer(text)
    return answer, grading.answer_is_correct(answer, gold)


def make_record(*, model: str, model_config: dict[str, Any], dataset: str, problem_id: str, gold: str,
                sample_index: int, num_samples: int, prompt_length: int, length: int, answer: str | None,
                correct: bool, finish_reason: str | None = None, text: str | None = None,
                token_ids: list[int] | None = None, truncation: Mapping[str, bool] | None = None,
                cost: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A record with its fields in the schema's order (optional fields left out when None; the config is added
    by `ResultsStore.append` when not given)."""
    record: dict[str, Any] = {"model": model, "model_config": model_config, "dataset": dataset,
                              "problem_id": problem_id, "gold": gold, "sample_index": sample_index,
                              "num_samples": num_samples, "prompt_length": prompt_length, "length": length}
    optional = {"finish_reason": finish_reason, "text": text, "token_ids": token_ids}
    record.update((k, v) for k, v in optional.items() if v is not None)
    record.update(answer=answer, correct=correct)
    optional = {"truncation": truncation, "cost": cost, "config": config}
    record.update((k, v) for k, v in optional.items() if v is not None)
    return record


def sample_record(tokens: Sequence[int], finish_reason: str, *, sample_index: int, num_samples: int, model: str,
                  config: "Qwen3Config", dataset: str, problem_id: str, gold: str, prompt_length: int,
                  tokenizer: "Tokenizer", budgets: Sequence[int], attention: "AttentionConfig", hardware: str,
                  dtype: "DTypeLike", grade: Callable[[str, str], tuple[str | None, bool]] = math_verdict
                  ) -> dict[str, Any]:
    """The record of one generated sample (its ids, the stop token included, and finish reason; sample
    `sample_index` of `num_samples` of its problem), as generate's on_finish gives it. The text is decoded
    without special tokens; `grade(text, gold)` gives (answer, correct) (default: math-verify); truncation holds
    the grade of each budget below the trace's length (module docstring); cost is the sample's share of
    `tts_cost` of the N samples at its length, with `config`, `attention`, `hardware` and the KV cache
    `dtype`."""
    tokens = [int(t) for t in tokens]

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    text = decode(tokens)
    answer, correct = grade(text, gold)
    truncation = metrics.truncated_grades(tokens, [b for b in budgets if b < len(tokens)], decode,
                                          lambda cut: grade(cut, gold)[1])
    n = num_samples
    share = tts_cost(config, prompt_len=prompt_length, gen_lens=len(tokens), num_samples=n, attention=attention,
                     hardware=hardware, dtype=dtype)
    return make_record(
        model=model, model_config=config.to_hf_dict(), dataset=dataset, problem_id=problem_id, gold=gold,
        sample_index=sample_index, num_samples=n, prompt_length=prompt_length, length=len(tokens),
        finish_reason=finish_reason, text=text, token_ids=tokens, answer=answer, correct=bool(correct),
        truncation={str(b): bool(c) for b, c in truncation.items()},
        cost={"compute_flops": share.compute_flops / n, "memory_bytes": share.memory_bytes / n,
              "eflops": share.eflops / n, "hardware": share.hardware})
