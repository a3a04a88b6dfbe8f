"""Evaluation (docs/evaluation.md): benchmark problems and the Kinetics prompt (`datasets`), answer extraction and
equivalence (`grading`), accuracy metrics (`metrics`), and the per-sample results file (`results`)."""

from kinetics_jax.eval.datasets import (DATASETS, FINAL_ANSWER_TEMPLATE, Problem, kinetics_prompt, load_problems,
                                        prompt_ids)
from kinetics_jax.eval.grading import answer_is_correct, answers_equivalent, extract_answer, grade
from kinetics_jax.eval.metrics import (expected_majority_vote, majority_vote, pass_at_k, per_query_table,
                                       truncation_accuracy)

__all__ = ["DATASETS", "FINAL_ANSWER_TEMPLATE", "Problem", "answer_is_correct", "answers_equivalent",
           "expected_majority_vote", "extract_answer", "grade", "kinetics_prompt", "load_problems",
           "majority_vote", "pass_at_k", "per_query_table", "prompt_ids", "truncation_accuracy"]
