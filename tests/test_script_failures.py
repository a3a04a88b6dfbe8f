"""The scripts on bad input, driven as a user drives them: each case runs a script in its own process and must
end with a non-zero exit code and one line on stderr, `<script>: error: <cause>`, naming the cause; no
traceback; nothing left behind in the output's directory (no temporary, .partial, .old or lock file) and no
output written. What is not the error line is filtered first: absl INFO log lines, and the two lines the CUDA
plugin prints on a machine without a GPU (the test extra installs it for the compile checks).

The cases run two at a time in a module fixture (each is mostly interpreter and jax start-up), then each test
checks one of them.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from typing import Callable

import pytest

from kinetics_jax import outputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "kinetics_jax", "assets", "tiny-random-qwen3")
NOISE = re.compile(r"^(I\d{4} \d\d:\d\d:\d\d\.\d+ |WARNING: All log messages before absl::InitializeLog"
                   r"|I0000 .*cudart_stub\.cc)")


@dataclasses.dataclass(frozen=True)
class Case:
    """scripts/<script> run with `args` in a fresh directory (cwd) after `setup(cwd)`; its stderr line must
    contain `expect` (a regex). `held`: an output (relative to cwd) that the test process holds open for writing
    while the script runs, as a concurrent writer would."""
    script: str
    args: tuple[str, ...]
    expect: str
    setup: Callable[[str], None] = lambda cwd: None
    held: str | None = None


def _write(name: str, text: str | bytes) -> Callable[[str], None]:
    def setup(cwd: str) -> None:
        mode = "wb" if isinstance(text, bytes) else "w"
        with open(os.path.join(cwd, name), mode) as f:
            f.write(text)
    return setup


def _tiny_with(**fields) -> Callable[[str], None]:
    """A copy of the embedded tiny checkpoint at cwd/ckpt with config.json fields replaced."""
    def setup(cwd: str) -> None:
        shutil.copytree(TINY, os.path.join(cwd, "ckpt"))
        with open(os.path.join(TINY, "config.json")) as f:
            config = json.load(f)
        with open(os.path.join(cwd, "ckpt", "config.json"), "w") as f:
            json.dump({**config, **fields}, f)
    return setup


def _copy_tiny(cwd: str) -> None:
    shutil.copytree(TINY, os.path.join(cwd, "ckpt"))


def _truncated_orbax(cwd: str) -> None:
    """The tiny checkpoint converted to orbax at cwd/orbax, its largest array data file cut to 100 bytes."""
    import kinetics_jax as kj
    kj.convert_hf_checkpoint(TINY, os.path.join(cwd, "orbax"))
    files = [os.path.join(d, f) for d, _, names in os.walk(os.path.join(cwd, "orbax", "params"))
             for f in names if os.path.basename(d) == "d"]
    os.truncate(max(files, key=os.path.getsize), 100)


def _steps(*setups: Callable[[str], None]) -> Callable[[str], None]:
    def setup(cwd: str) -> None:
        for step in setups:
            step(cwd)
    return setup


def _mkdir(name: str) -> Callable[[str], None]:
    return lambda cwd: os.makedirs(os.path.join(cwd, name))


_PROBLEM = {"id": "p0", "problem": "What is 1 + 1?", "answer": "2"}
_LONG = {"id": "long-one", "problem": "word " * 600, "answer": "2"}
_RECORD = {"model": "ckpt", "model_config": {}, "dataset": "aime24", "problem_id": "p0", "gold": "2",
           "sample_index": 0, "num_samples": 2, "prompt_length": 200, "length": 8, "answer": None, "correct": False,
           "config": {}}
_GEN = ("--max_new_tokens=4", "--dtype=float32")
_EVAL = ("--dataset_path=d.jsonl", "--output=runs/e.jsonl", "--max_new_tokens=8", "--num_samples=2",
         "--dtype=float32")

CASES = {
    # generate.py
    "generate-no-prompt": Case("generate.py", (), "give --prompt or --prompts_file"),
    "generate-output-is-a-directory": Case("generate.py", ("--prompt=x", "--output=out", *_GEN),
                                           "output .*/out is a directory", _mkdir("out")),
    "generate-output-read-only": Case("generate.py", ("--prompt=x", "--output=/proc/kinetics_jax_test/o.jsonl",
                                                      *_GEN), "cannot write output /proc/kinetics_jax_test"),
    "generate-output-busy": Case("generate.py", ("--prompt=x", "--output=o.jsonl", *_GEN),
                                 r"o.jsonl is being written by another process \(pid \d+", held="o.jsonl"),
    "generate-prompts-file-missing": Case("generate.py", ("--prompts_file=nope.txt",),
                                          "No such file or directory: nope.txt"),
    "generate-prompts-file-not-json": Case("generate.py", ("--prompts_file=p.jsonl",), r"p.jsonl:2: not JSON",
                                           _write("p.jsonl", '{"prompt": "a"}\n{"prompt": \n')),
    "generate-prompts-file-not-object": Case("generate.py", ("--prompts_file=p.jsonl",),
                                             "p.jsonl:1: a line must be a JSON object, got list",
                                             _write("p.jsonl", "[1, 2]\n")),
    "generate-prompts-file-not-utf8": Case("generate.py", ("--prompts_file=p.txt",), "p.txt is not UTF-8 text",
                                           _write("p.txt", b"ok\n\xff\xfe\n")),
    "generate-checkpoint-missing": Case("generate.py", ("--prompt=x", "--checkpoint=nowhere", *_GEN),
                                        "nowhere"),
    "generate-orbax-truncated": Case("generate.py", ("--prompt=x", "--checkpoint=orbax", *_GEN),
                                     r"orbax: cannot read array \S+: OUT_OF_RANGE", _truncated_orbax),
    "generate-config-wrong-type": Case("generate.py", ("--prompt=x", "--checkpoint=ckpt", *_GEN),
                                       "rms_norm_eps", _tiny_with(rms_norm_eps="1e-6")),
    "generate-temperature-inf": Case("generate.py", ("--prompt=x", "--temperature=inf", *_GEN), "temperature"),
    "generate-unknown-flag": Case("generate.py", ("--prompt=x", "--num_sample=2"),
                                  "Unknown command line flag 'num_sample'"),
    "generate-absurd-request": Case("generate.py", ("--prompt=x", "--num_samples=100000000", *_GEN),
                                    "100000000"),
    "generate-seed-out-of-range": Case("generate.py", ("--prompt=x", f"--seed={2 ** 64}", *_GEN), "seed"),
    "generate-top-p-0": Case("generate.py", ("--prompt=x", "--top_p=0"), "top_p must be in"),
    "generate-num-samples-0": Case("generate.py", ("--prompt=x", "--num_samples=0"), "num_samples"),
    "generate-max-new-tokens-0": Case("generate.py", ("--prompt=x", "--max_new_tokens=0"), "max_new_tokens"),
    "generate-block-topk-without-budget": Case("generate.py", ("--prompt=x", "--attention=block_topk"),
                                               "block_topk"),
    "generate-topk-in-a-sliding-window": Case("generate.py", ("--prompt=x",
                                                              "--attention=sliding_window-8:topk=3"), "topk"),
    # evaluate.py
    "evaluate-num-samples-0": Case("evaluate.py", (*_EVAL[:2], "--num_samples=0"), "num_samples"),
    "evaluate-no-dataset": Case("evaluate.py", ("--output=runs/e.jsonl",), "give --dataset_path"),
    "evaluate-overlong-problem": Case("evaluate.py", (*_EVAL[:2], "--max_new_tokens=3800", "--dtype=float32"),
                                      "problem 'long-one': its prompt .* exceeds the model's "
                                      "max_position_embeddings \\(4096\\)",
                                      _write("d.jsonl", json.dumps(_PROBLEM) + "\n" + json.dumps(_LONG) + "\n")),
    "evaluate-output-busy": Case("evaluate.py", _EVAL, "e.jsonl is being written by another process",
                                 _steps(_write("d.jsonl", json.dumps(_PROBLEM) + "\n"), _mkdir("runs")),
                                 held="runs/e.jsonl"),
    "evaluate-records-not-objects": Case("evaluate.py", _EVAL, r"e.jsonl:1",
                                         _steps(_write("d.jsonl", json.dumps(_PROBLEM) + "\n"), _mkdir("runs"),
                                                _write("runs/e.jsonl", "[1, 2]\n"))),
    "evaluate-duplicate-record": Case("evaluate.py", _EVAL, r"e.jsonl:2 repeats problem 'p0' sample 0",
                                      _steps(_write("d.jsonl", json.dumps(_PROBLEM) + "\n"), _mkdir("runs"),
                                             _write("runs/e.jsonl", (json.dumps(_RECORD) + "\n") * 2))),
    # convert_checkpoint.py
    "convert-onto-its-source": Case("convert_checkpoint.py", ("--hf_dir=ckpt", "--output_dir=ckpt", "--overwrite"),
                                    "ckpt", _copy_tiny),
    "convert-output-busy": Case("convert_checkpoint.py", ("--hf_dir=ckpt", "--output_dir=out"),
                                "out is being written by another process", _copy_tiny, held="out"),
    "convert-output-exists": Case("convert_checkpoint.py", ("--hf_dir=ckpt", "--output_dir=out"),
                                  "out already exists", _steps(_copy_tiny, _write("out", "x"))),
    "convert-config-wrong-type": Case("convert_checkpoint.py", ("--hf_dir=ckpt", "--output_dir=out"),
                                      r"config.json: rms_norm_eps must be a finite number, got '1e-6' \(str\)",
                                      _tiny_with(rms_norm_eps="1e-6")),
    "convert-int-dtype-refused": Case("convert_checkpoint.py", ("--hf_dir=ckpt", "--output_dir=out",
                                                                "--dtype=int8"), "dtype", _copy_tiny),
    "convert-flags-missing": Case("convert_checkpoint.py", ("--output_dir=out",), "hf_dir"),
    # the others
    "cost-report-unknown-config": Case("cost_report.py", ("--config=qwen3-9b",), "qwen3-9b"),
    "cost-report-budget-off-the-blocks": Case("cost_report.py", ("--budgets=100",), "16-token blocks"),
    "cost-report-block-topk-without-budget": Case("cost_report.py", ("--attention=block_topk",), "block_topk"),
    "compile-report-unknown-target": Case("compile_report.py", ("--target=tpu-v9",), "unknown target"),
    "compile-report-batch-not-a-multiple": Case("compile_report.py", ("--batch=6", "--num_samples=4"),
                                                "multiple of --num_samples"),
    "compile-report-unknown-preset": Case("compile_report.py", ("--preset=qwen9",), "preset"),
    "compile-report-prompt-fills-the-context": Case("compile_report.py", ("--context=100", "--prompt_len=100"),
                                                    "prompt_len"),
    "study-math-task-without-dataset": Case("study.py", ("--task=aime24", "--out_dir=st"), "needs --dataset_path"),
    "study-unknown-policy": Case("study.py", ("--policies=dense,sparse", "--out_dir=st"),
                                 "unknown attention policy"),
    "study-models-not-distinct": Case("study.py", ("--models=tiny-s,tiny-s", "--out_dir=st"), "distinct"),
    "study-dataset-for-the-chase-task": Case("study.py", ("--dataset_path=x.jsonl", "--out_dir=st"), "math tasks"),
    "cost-report-results-missing": Case("cost_report.py", ("--results=/missing.jsonl",),
                                        "No such file or directory: /missing.jsonl"),
    "cost-report-results-not-records": Case("cost_report.py", ("--results=r.jsonl",),
                                            "r.jsonl:1: not a generate.py record", _write("r.jsonl", "5\n")),
    "benchmark-decode-context-0": Case("benchmark_decode.py", ("--context=0",), "--context must be integers >= 1"),
    "scaling-analysis-results-missing": Case("scaling_analysis.py", ("--results=nope.jsonl", "--out_dir=sc"),
                                             "not found: nope.jsonl"),
    "study-out-dir-busy": Case("study.py", ("--out_dir=st",), "st is being written by another process",
                               held="st"),
    "study-model-missing": Case("study.py", ("--models=tiny-s,nowhere", "--out_dir=st"), "nowhere"),
}


def _files(root: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, dirs, files in os.walk(root)
                  for f in files + dirs)


def _run(case: Case, cwd: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """The finished process and the files in cwd before it ran."""
    case.setup(cwd)
    before = _files(cwd)
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", ALLOW_MULTIPLE_LIBTPU_LOAD="1",
               JAX_SKIP_CUDA_CONSTRAINTS_CHECK="1")
    command = [sys.executable, os.path.join(ROOT, "scripts", case.script), *case.args]
    with (outputs.exclusive(os.path.join(cwd, case.held), directory=case.script == "study.py") if case.held
          else contextlib.nullcontext()):
        proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return proc, before


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[str, subprocess.CompletedProcess, list[str]]]:
    """name -> (cwd, the finished process, the files in cwd before it ran)."""
    cwds = {name: str(tmp_path_factory.mktemp(name)) for name in CASES}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # the CI machine has two cores
        futures = {name: pool.submit(_run, CASES[name], cwds[name]) for name in CASES}
        return {name: (cwds[name], *future.result()) for name, future in futures.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_fails_with_one_line_and_leaves_nothing(runs, name):
    case = CASES[name]
    cwd, proc, before = runs[name]
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not NOISE.match(line)]
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, "\n".join(lines)
    assert lines[0].startswith(f"{case.script}: error: "), lines[0]
    assert re.search(case.expect, lines[0]), lines[0]
    # Nothing written, nothing removed: no output, no temporary, no lock; the source of a conversion intact.
    assert _files(cwd) == before
