"""Plan a pod run without the pod: compile the decode step (and the prefill) that kj.generate runs for a TPU or
GPU target on this machine, and print what one chip holds and moves per step.

    python scripts/compile_report.py --target=tpu-v5p --preset=qwen3-8b --batch=64 --context=4096 \
        --attention=block_topk-1024 --attention_backend=pallas
    python scripts/compile_report.py --target=tpu-v6e,cuda-h100 --batch=16 --json=runs/compile.json \
        --hlo_out=runs/step.hlo

No accelerator is used: libtpu compiles TPU programs (Mosaic kernels included) and the CUDA plugin compiles GPU
programs (Triton kernels included) on the CPU (kinetics_jax/cost/targets.py). Per chip it prints the
argument, output and temporary bytes of the compiled step and prefill, XLA's FLOPs and bytes accessed for one
step (layers unrolled: XLA counts a loop body once; TPU only, XLA has no GPU cost analysis), the analytic bytes
the step must read (weights, the KV and summaries the policy reads, the KV it writes), their ratio, the roofline
and XLA's own seconds per step, and any HBM copy of a pool, summary or weight in the step. A request that does
not fit a chip says so with the numbers. --batch is the number of sequences (prompts x samples).
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")  # compile-only CUDA devices on a machine without CUDA
for _key, _value in (("TPU_WORKER_HOSTNAMES", "localhost"), ("TPU_ACCELERATOR_TYPE", "v5litepod-4"),
                     ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")):
    os.environ.setdefault(_key, _value)

from absl import flags, logging  # noqa: E402

import kinetics_jax as kj  # noqa: E402
from kinetics_jax import cli  # noqa: E402
from kinetics_jax.policies import flags as attention_flags  # noqa: E402
from kinetics_jax.cost import compiled, targets  # noqa: E402
from kinetics_jax.scaling.plots import write_json, write_text  # noqa: E402
from kinetics_jax.sharding import meshes  # noqa: E402

_TARGET = flags.DEFINE_list("target", ["tpu-v5p"], f"Chips to compile for ({', '.join(targets.TARGETS)}).")
_MESH = flags.DEFINE_string("mesh_shape", "1,1", "data,model devices (at most the 4 TPU chips or 8 GPUs described).")
_PRESET = flags.DEFINE_string("preset", "qwen3-8b", f"Model preset ({', '.join(kj.Qwen3Config.preset_names())}).")
_CONFIG = flags.DEFINE_string("config", None, "An HF config.json (or its directory) instead of --preset.")
_BATCH = flags.DEFINE_integer("batch", 16, "Sequences decoded together (prompts x samples).", lower_bound=1)
_CONTEXT = flags.DEFINE_integer("context", 4096, "Cached tokens per sequence at the compiled step.", lower_bound=2)
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Samples per prompt (N; --batch must be a multiple).",
                                    lower_bound=1)
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", None, "Prompt tokens of the context (default: context - 1).",
                                   lower_bound=1)
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Parameter and cache dtype.")
_JSON = flags.DEFINE_string("json", None, "Write the figures of every target as JSON here.")
_HLO = flags.DEFINE_string("hlo_out", None, "Write the compiled decode step's HLO text here (first target; "
                                            "<name>.<target>.hlo for each when there are several).")
attention_flags.define_flags()


def _config() -> kj.Qwen3Config:
    if _CONFIG.value:
        path = _CONFIG.value
        return kj.Qwen3Config.from_hf_config(os.path.join(path, "config.json") if os.path.isdir(path) else path)
    if _PRESET.value not in kj.Qwen3Config.preset_names():
        raise ValueError(f"--preset {_PRESET.value!r} is not one of {', '.join(kj.Qwen3Config.preset_names())}")
    return kj.Qwen3Config.preset(_PRESET.value)


def _request() -> compiled.Request:
    if _BATCH.value % _NUM_SAMPLES.value:
        raise ValueError(f"--batch ({_BATCH.value}) must be a multiple of --num_samples ({_NUM_SAMPLES.value})")
    mesh = meshes.parse_mesh_shape(_MESH.value) or (1, 1)
    return compiled.Request(_config(), attention_flags.config_from_flags(),
                            num_prompts=_BATCH.value // _NUM_SAMPLES.value, num_samples=_NUM_SAMPLES.value,
                            context=_CONTEXT.value, prompt_len=_PROMPT_LEN.value, dtype=_DTYPE.value,
                            mesh_shape=mesh)


def _gib(x: int | None) -> str:
    return "-" if x is None else f"{x / 2**30:.2f} GiB"


def _print(report: compiled.Report) -> None:
    r = report.request
    step, prefill = report.step, report.prefill
    print(f"\n{report.target.name}: {r.attention.describe()}, {r.num_prompts} x {r.num_samples} sequences at "
          f"{r.context} tokens ({r.prompt_len} of prompt), {r.dtype}, mesh {r.mesh_shape[0]}x{r.mesh_shape[1]}; "
          f"per chip ({_gib(report.target.hbm_bytes)} of HBM)")
    for program in (step, prefill):
        if not program.compiled:
            print(f"  {program.name:<12} does not compile: {program.error}")
            continue
        print(f"  {program.name:<12} arguments {_gib(program.argument_bytes)}, outputs {_gib(program.output_bytes)} "
              f"({_gib(program.alias_bytes)} in place), temporaries {_gib(program.temp_bytes)}; needs "
              f"{_gib(program.peak_bytes)}")
    terms = ", ".join(f"{name} {value / 1e9:.2f} GB" for name, value in report.analytic_terms.items())
    print(f"  analytic     {report.analytic_bytes / 1e9:.2f} GB per step ({terms}), "
          f"{report.analytic_flops / 1e12:.3f} TFLOP")
    if step.xla_bytes_accessed is not None:
        print(f"  XLA          {step.xla_bytes_accessed / 1e9:.2f} GB accessed, {step.xla_flops / 1e12:.3f} TFLOP; "
              f"bytes ratio {report.bytes_ratio:.3f}")
    xla_ms = "-" if step.xla_seconds is None else f"{step.xla_seconds * 1e3:.2f} ms"
    print(f"  per step     roofline {report.roofline_seconds * 1e3:.2f} ms, XLA's estimate {xla_ms}")
    print(f"  copies       {'none' if not step.copies else '; '.join(map(str, step.copies))}")
    if not report.fits:
        need = max((p.peak_bytes or p.argument_bytes or 0) for p in (step, prefill))
        print(f"  DOES NOT FIT: {'needs ' + _gib(need) if need else 'the compiler ran out of memory'} of "
              f"{_gib(report.target.hbm_bytes)} per chip")


def main(argv: list[str]) -> int:
    del argv
    request = _request()
    chosen = [targets.target(name) for name in _TARGET.value]
    missing = {t.name: targets.unavailable(t) for t in chosen if targets.unavailable(t)}
    if missing:
        raise SystemExit("cannot compile for " + "; ".join(f"{name}: {why}" for name, why in missing.items()))
    results = []
    for target in chosen:
        logging.info("compiling for %s", target.name)
        report = compiled.report(request, target, keep_hlo=_HLO.value is not None)
        _print(report)
        results.append(report.as_dict())
        if _HLO.value and report.step.hlo_text:
            path = _HLO.value
            if len(chosen) > 1:
                stem, ext = os.path.splitext(path)
                path = f"{stem}.{target.name}{ext or '.hlo'}"
            write_text(path, report.step.hlo_text)
    if _JSON.value:
        write_json(_JSON.value, results if len(results) > 1 else results[0])
    return 0 if all(r["fits"] for r in results) else 1  # 1: some target cannot run the request


if __name__ == "__main__":
    cli.run(main)
