"""The fit planner: will a config train on a target, in how much memory, how fast, and if not,
what will. `python -m gptjax.plan` (or gptjax-plan):

  python -m gptjax.plan --config=500M_1024 --target=tpu-v5e-1
  python -m gptjax.plan --config=500M_1024 --target=gpu-a100-40gb --search
  python -m gptjax.plan --config=small --target=local --check
  python -m gptjax.plan --config=small --target=8xgpu-h100-80gb --json

Targets: `local` (this machine's devices, compiled for real), TPU slices by Cloud name (tpu-v5e-1,
tpu-v5e-8, tpu-v4-8, tpu-v5p-8, tpu-v6e-8, ...: compiled without a TPU by libtpu), NVIDIA GPUs by
name (gpu-h100-80gb, gpu-h200-141gb, gpu-a100-40gb, gpu-a100-80gb, gpu-l4-24gb,
gpu-rtx4090-24gb, 8xgpu-...: compiled without a GPU by jax's CUDA plugin), each falling back to
the analytic model when its compiler is not installed (pip install "gptjax[tpu]" or
"gptjax[gpu-plan]"). Figures compiled without the hardware are estimates of XLA's cost models.
"""

from __future__ import annotations

import json
import sys

from gptjax import cli
from gptjax.errors import ConfigError, UserError


def train_command(argv: list[str]) -> str:
  """`python -m gptjax.train` with the planner's --config and --config.* flags (not the search's
  own fields, which the search sets)."""
  searched = ("batch_size", "grad_accum_steps", "dtype", "remat", "mesh.")
  kept = []
  for arg in argv:
    if arg.startswith("--config="):  # the preset reaches absl as <gptjax/presets.py>:<preset>
      kept.append("--config=" + arg.split("=", 1)[1].split(".py:", 1)[-1])
    elif arg.startswith("--config.") and not arg[len("--config."):].startswith(searched):
      kept.append(arg)
  return " ".join(["python -m gptjax.train", *kept])


def main(f) -> None:
  from gptjax import config as config_lib
  from gptjax import sharding
  from gptjax.planner import estimate as estimate_lib
  from gptjax.planner import fit, report, search, targets
  from gptjax.planner.compiled import fast_is_exact
  config = f.config
  if config is None:
    raise UserError("--config is required, e.g. --config=500M_1024.")
  if config.init_from:  # fine-tuning GPT-2: its architecture, as gptjax.train takes it
    from gptjax import hf_gpt2
    hf_gpt2.apply_hf_architecture(config, config.init_from, need_weights=False)
  if f.target != "local":  # compile-only devices: keep JAX off any accelerator this machine has
    targets.compile_only_process()
  target = targets.parse_target(f.target)
  if f.target == "local":
    sharding.use_cpu_devices(config.cpu_devices)
    target = targets.local_target()
  config_lib.validate(config)
  cli.status(f"compiling the train step for {target.name}" if f.method !=
             "analytic" else f"estimating the train step on {target.name}")
  if f.check:
    problems, result = fit.check(config, target, fast=f.fast)
    if f.json:
      print(
          json.dumps(dict(ok=not problems,
                          problems=problems,
                          estimate=result.to_json() if result else None),
                     indent=1))
    else:
      if result:
        print(report.format_estimate(result, config))
      print("\ncheck: " + (f"{len(problems)} problem(s)"
                           if problems else f"OK, {config.name} will run on {target.name}"))
      for problem in problems:
        print(f"  - {problem}")
    sys.exit(2 if problems else 0)
  method = {"auto": "auto", "compile": "compile", "analytic": estimate_lib.ANALYTIC}[f.method]
  if f.search:
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    verify = 0 if method == estimate_lib.ANALYTIC else f.verify  # analytic: compile none of them
    found, rejected = search.search(config, target, verify=verify, fast=True, log=log)
    command = train_command(sys.argv[1:])
    if f.json:
      best = found[0].estimate.settings if found else None
      print(
          json.dumps(dict(best=found[0].estimate.to_json() if found else None,
                          command=f"{command} {search.format_overrides(best, config)}".strip()
                          if found else None,
                          runners_up=[c.estimate.to_json() for c in found[1:6]],
                          rejected=rejected),
                     indent=1))
    else:
      try:  # the config as given, compiled like the candidates where the target compiles
        given = estimate_lib.estimate(config, target, method=method, fast=fast_is_exact(target))
      except ConfigError:  # its batch does not split over these devices
        given = None
      print(report.format_search(found, rejected, config, command, target, given))
    sys.exit(0 if found else 2)
  try:
    result = estimate_lib.estimate(config,
                                   target,
                                   method=method,
                                   fast=f.fast,
                                   num_samples=f.num_samples)
  except targets.CompileOnlyUnavailable as e:
    raise UserError(f"--method=compile: {e}") from e
  if f.measure:
    if f.target != "local":
      raise UserError(f"--measure runs the step here: use it with --target=local, not "
                      f"{f.target}.")
    from gptjax.planner import measure
    measure.measure(config, result)
  print(
      json.dumps(result.to_json(), indent=1) if f.json else report.format_estimate(result, config))


def define_flags(values) -> None:
  from absl import flags
  flags.DEFINE_string(
      "target",
      "local", "Where it would run: local, tpu-v5e-1, tpu-v5e-8, "
      "tpu-v4-8, tpu-v5p-8, tpu-v6e-8 (any Cloud size), gpu-h100-80gb, "
      "gpu-h200-141gb, gpu-a100-40gb, gpu-a100-80gb, gpu-l4-24gb, gpu-rtx4090-24gb, "
      "or N of them: 8xgpu-h100-80gb.",
      flag_values=values)
  flags.DEFINE_bool("search",
                    False,
                    "Find the fastest batch split, remat, dtype and mesh that fit.",
                    flag_values=values)
  flags.DEFINE_bool("check",
                    False, "Will it run there? Every problem as one line with its fix; "
                    "exit status 2 if there are any.",
                    flag_values=values)
  flags.DEFINE_enum("method",
                    "auto", ["auto", "compile", "analytic"], "auto compiles where the "
                    "target's compiler is installed, else uses the analytic model.",
                    flag_values=values)
  flags.DEFINE_bool("fast",
                    False, "Compile 1- and 2-layer versions and extrapolate per layer "
                    "instead of compiling every layer (minutes -> seconds for deep models).",
                    flag_values=values)
  flags.DEFINE_integer("verify",
                       3, "--search: compile this many of the fastest candidates "
                       "(none with --method=analytic).",
                       flag_values=values)
  flags.DEFINE_bool("measure",
                    False, "--target=local: also run the step (allocating it) and "
                    "report its measured time and peak memory.",
                    flag_values=values)
  flags.DEFINE_integer("num_samples",
                       1,
                       "Sequences sampled at once, for the generation memory.",
                       flag_values=values)
  flags.DEFINE_bool("json",
                    False,
                    "Print one JSON object instead of the report.",
                    flag_values=values)


def cli_main(argv: list[str] | None = None) -> None:
  """`python -m gptjax.plan` and the gptjax-plan console script."""
  cli.run_command(main, define_flags, __doc__, config="required", argv=argv)


if __name__ == "__main__":
  cli_main()
