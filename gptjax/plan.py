"""The fit planner: will a config train on a target, in how much memory, how fast, and if not, what
will. `python -m gptjax.plan` (and tools/plan.py):

  python -m gptjax.plan --config=configs/500M_1024.py --target=tpu-v5e-1
  python -m gptjax.plan --config=configs/500M_1024.py --target=gpu-a100-40gb --search
  python -m gptjax.plan --config=configs/small.py --target=local --check
  python -m gptjax.plan --config=configs/small.py --target=8xgpu-h100-80gb --json

Targets: `local` (this machine's devices, compiled for real), TPU slices by Cloud name (tpu-v5e-1,
tpu-v5e-8, tpu-v4-8, tpu-v5p-8, tpu-v6e-8, ...: compiled without a TPU by libtpu), NVIDIA GPUs by
name (gpu-h100-80gb, gpu-a100-40gb, gpu-a100-80gb, gpu-l4-24gb, gpu-rtx4090-24gb, 8xgpu-...:
compiled without a GPU by jax's CUDA plugin), each falling back to the analytic model when its
compiler is not installed. gptjax/estimate.py does the work; this module checks, searches, prints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import sys
from typing import Any

import jax
import ml_collections

from gptjax import config as config_lib
from gptjax import estimate as estimate_lib
from gptjax import sharding, targets
from gptjax.errors import ConfigError, DeviceMemoryError, UserError
from gptjax.estimate import Estimate

GiB = 2**30
REQUIRED_HEADROOM = 0.10  # --search keeps this share of device memory free
MAX_TENSOR_PARALLEL = 8   # tensor parallelism beyond one host's fast links rarely pays


# --- --check ----------------------------------------------------------------------------------------

def check(config: ml_collections.ConfigDict, target: targets.Target,
          fast: bool = True) -> tuple[list[str], Estimate | None]:
  """Everything that would stop `config` on `target`, one line each with its fix, and the estimate.

  Checks the config's fields, the mesh against the device count, the batch against the
  data-parallel size, heads and vocabulary against tensor parallelism, the tokenizer and input
  file, and the memory (with `fast`, per-layer extrapolation of shallow compiles).
  """
  problems = []
  try:
    config_lib.validate(config)
    shape = sharding.mesh_shape(config, target.num_devices)
    sharding.validate_for_mesh(config, shape)
  except ConfigError as e:
    return [str(e)], None
  if config.input_file and not os.path.isfile(config.input_file):
    problems.append(f"config field 'input_file': {config.input_file!r} does not exist. Fix: a "
                    f"path to a UTF-8 text file, or \"\" for the embedded default corpus.")
  tokenizer = config_lib.resolve_tokenizer(config)
  if tokenizer == "gpt2" and not _gpt2_ranks_available(config):
    problems.append("config field 'tokenizer_path': GPT-2 BPE needs tiktoken's gpt2 ranks, which "
                    "are not cached here and would be downloaded. Fix: set "
                    "--config.tokenizer_path=<gpt2.tiktoken> (or $GPTJAX_GPT2_TIKTOKEN) offline.")
  result = estimate_lib.estimate(config, target, fast=fast)
  if not result.fits:
    problems.append(memory_problem(config, target, result.memory.total, result.method))
  return problems, result


def _gpt2_ranks_available(config: ml_collections.ConfigDict) -> bool:
  from gptjax import data
  paths = [config.tokenizer_path, os.environ.get(data.GPT2_TIKTOKEN_ENV, "")]
  if any(path and os.path.isfile(path) for path in paths):
    return True
  cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.path.join(
      os.environ.get("TMPDIR", "/tmp"), "data-gym-cache")
  return os.path.isdir(cache) and bool(os.listdir(cache))


def memory_problem(config: ml_collections.ConfigDict, target: targets.Target, needed: int,
                   source: str) -> str:
  """The one line that says a config does not fit, by how much, and what would."""
  return (f"memory: the train step needs {gib(needed)} per device ({source}), but "
          f"{target.name} ({target.chip.name}) has {gib(target.device_memory_bytes)}. Fix: "
          f"{memory_fix(config, target)}.")


def memory_fix(config: ml_collections.ConfigDict, target: targets.Target) -> str:
  """The settings with the fewest changes that fit `target`, as --config flags (compiled for the
  local devices when they are the target: cheap there, and exact)."""
  found = fewest_changes_that_fit(config, target, compile=target.name == "local")
  if found is None:
    return "more devices (a larger --target) or a smaller model"
  candidate, total = found
  return (f"{format_overrides(candidate.estimate.settings, config)} (planned {gib(total)} per "
          f"device; `python -m gptjax.plan --search` ranks every option)")


def fewest_changes_that_fit(config: ml_collections.ConfigDict, target: targets.Target,
                            compile: bool, tries: int = 3) -> tuple["Candidate", int] | None:
  """The analytic search's fitting settings with the fewest changes (then the fastest) and their
  bytes per device; with `compile`, the first of the `tries` best whose compiled step (per-layer
  extrapolated) also keeps REQUIRED_HEADROOM free."""
  fitting, _ = search(config, target, verify=0)
  fitting.sort(key=lambda c: (c.changes, _speed_order(c)))
  for candidate in fitting[:tries if compile else 1]:
    total = candidate.estimate.memory.total
    if compile:
      total = estimate_lib.estimate(candidate.config, target, method="compile",
                                    fast=estimate_lib.fast_is_exact(target)).memory.total
    if total <= (1 - REQUIRED_HEADROOM) * target.device_memory_bytes:
      return candidate, total
  return None


# --- The trainer's check ----------------------------------------------------------------------------

def ensure_fits(config: ml_collections.ConfigDict, compiled) -> int:
  """The compiled train step's bytes per device; DeviceMemoryError when they exceed the device's.

  gptjax.train calls this after compiling its step and before allocating any state. On CPUs it
  checks only when $GPTJAX_DEVICE_MEMORY_GB sets a limit (host RAM is shared and swappable).
  """
  needed = estimate_lib.figures_of(compiled).total
  target = targets.local_target()
  if target.platform == "cpu" and not os.environ.get(targets.DEVICE_MEMORY_ENV):
    return needed
  if target.device_memory_bytes and needed > target.device_memory_bytes:
    raise DeviceMemoryError(memory_problem(config, target, needed, "XLA's memory analysis of the "
                                           "compiled step") + " Nothing was allocated.")
  return needed


@contextlib.contextmanager
def explain_out_of_memory(config: ml_collections.ConfigDict):
  """Turns an out-of-memory error from XLA into the planner's one clear DeviceMemoryError."""
  try:
    yield
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
      raise
    target = targets.local_target()
    raise DeviceMemoryError(
        f"{target.chip.name} ran out of memory: {estimate_lib.out_of_memory_line(e)}. Fix: "
        f"{memory_fix(config, target)}. Checkpoints written so far are intact.") from e


# --- --search ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class Candidate:
  config: ml_collections.ConfigDict
  estimate: Estimate
  changes: int  # settings that differ from the config searched from


def candidates(config: ml_collections.ConfigDict, target: targets.Target) -> tuple[
    list[ml_collections.ConfigDict], list[str]]:
  """Every mesh x micro-batch/accumulation x remat x dtype that keeps the config's tokens per
  step, and one line per kind of setting left out."""
  sequences = config.batch_size * config.grad_accum_steps
  devices = target.num_devices
  meshes, skipped = [], []
  for tensor in _divisors(devices):
    if tensor > MAX_TENSOR_PARALLEL or config.n_head % tensor or config.vocab_size % tensor:
      if tensor > 1:
        skipped.append(f"tensor={tensor}: more than {MAX_TENSOR_PARALLEL} or does not divide "
                       f"n_head={config.n_head} and vocab_size={config.vocab_size}")
      continue
    meshes += [(data, devices // tensor // data, tensor) for data in _divisors(devices // tensor)]
  result = []
  for (data, fsdp, tensor), accumulate in itertools.product(meshes, _divisors(sequences)):
    micro_batch = sequences // accumulate
    if micro_batch % (data * fsdp):
      continue
    for dtype, remat in itertools.product(("float32", "bfloat16"), (False, True)):
      candidate = ml_collections.ConfigDict(config.to_dict())
      candidate.update(dict(batch_size=micro_batch, grad_accum_steps=accumulate, dtype=dtype,
                            remat=remat))
      candidate.mesh.update(dict(data=data, fsdp=fsdp, tensor=tensor))
      result.append(candidate)
  if not result:
    skipped.append(f"no mesh of {devices} devices splits {sequences} sequences a step")
  return result, skipped


def search(config: ml_collections.ConfigDict, target: targets.Target, *, verify: int = 3,
           fast: bool = True, log=lambda line: None) -> tuple[list[Candidate], list[str]]:
  """The configurations that fit with REQUIRED_HEADROOM, fastest first, and why others did not.

  Every candidate is estimated analytically (milliseconds each); then, where the target compiles,
  the `verify` fastest that fit are compiled (per-layer extrapolation with `fast`), and their
  compiled memory and time replace the analytic ones.
  """
  configs, rejected = candidates(config, target)
  base = resolved_settings(config, target)
  ranked, too_big = [], []
  for candidate in configs:
    result = estimate_lib.estimate(candidate, target, method=estimate_lib.ANALYTIC)
    entry = Candidate(candidate, result, _changes(base, result.settings))
    (ranked if result.headroom >= REQUIRED_HEADROOM else too_big).append(entry)
  ranked.sort(key=_speed_order)
  verified = []
  fast = fast and estimate_lib.fast_is_exact(target)
  for entry in ranked[:verify]:
    log(f"compiling {format_overrides(entry.estimate.settings, config) or 'the config as given'}")
    try:
      compiled = estimate_lib.estimate(entry.config, target, method="compile", fast=fast)
    except targets.CompileOnlyUnavailable as e:
      rejected.append(f"not compiled, analytic figures only: {e}")
      break
    if compiled.headroom >= REQUIRED_HEADROOM:
      verified.append(Candidate(entry.config, compiled, entry.changes))
    else:
      too_big.append(Candidate(entry.config, compiled, entry.changes))
  verified.sort(key=_speed_order)
  unverified = [entry for entry in ranked if not any(entry.config is v.config for v in verified)
                and not any(entry.config is t.config for t in too_big)]
  if too_big:
    smallest = min(too_big, key=lambda c: c.estimate.memory.total)
    rejected.insert(0, f"{len(too_big)} settings need more than {100 - 100 * REQUIRED_HEADROOM:.0f}% "
                       f"of the device's {gib(target.device_memory_bytes)}; the smallest of them, "
                       f"{format_overrides(smallest.estimate.settings, config) or 'as given'}, "
                       f"needs {gib(smallest.estimate.memory.total)} ({smallest.estimate.method})")
  return verified + unverified, rejected


def resolved_settings(config: ml_collections.ConfigDict, target: targets.Target) -> dict[str, Any]:
  """The config's planned settings with a -1 mesh entry resolved for the target's devices."""
  settings = estimate_lib.planned_settings(config)
  try:
    shape = sharding.mesh_shape(config, target.num_devices)
  except ConfigError:
    return settings
  return {**settings, "mesh": dict(zip(sharding.MESH_AXES, shape))}


def _speed_order(candidate: Candidate):
  return (candidate.estimate.step_seconds or math.inf, candidate.changes)


def _changes(base: dict[str, Any], settings: dict[str, Any]) -> int:
  flat = lambda d: {**{k: v for k, v in d.items() if k != "mesh"}, **d["mesh"]}  # noqa: E731
  a, b = flat(base), flat(settings)
  return sum(a[k] != b[k] for k in a)


def _divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


# --- What it prints ---------------------------------------------------------------------------------

def gib(n: float) -> str:
  return f"{n / GiB:.2f} GiB"


def format_overrides(settings: dict[str, Any], config: ml_collections.ConfigDict) -> str:
  """`--config.k=v` for every planned setting that differs from `config` (a mesh that only
  spells out what the config's -1 entry resolves to is left as it is)."""
  parts = []
  for key, value in settings.items():
    if key == "mesh":
      devices = math.prod(value.values())
      try:
        current = dict(zip(sharding.MESH_AXES, sharding.mesh_shape(config, devices)))
      except ConfigError:
        current = dict(config.mesh)
      if current != value:
        parts += [f"--config.mesh.{axis}={size}" for axis, size in value.items()
                  if config.mesh[axis] != size]
    elif config[key] != value:
      parts.append(f"--config.{key}={value}")
  return " ".join(parts)


def format_duration(seconds: float) -> str:
  if seconds < 60:
    return f"{seconds:.1f} s"
  if seconds < 3600:
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"
  return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def format_estimate(result: Estimate, config: ml_collections.ConfigDict) -> str:
  """The planner's report: memory per device, speed, generation memory, and their sources."""
  target, memory, settings = result.target, result.memory, result.settings
  how = {estimate_lib.COMPILED: "compiled for this machine's devices",
         estimate_lib.DEVICELESS: f"compiled for {target.chip.name} without the hardware",
         estimate_lib.ANALYTIC: "analytic model (no compile)"}[result.method]
  if result.extrapolated_from_layers:
    how += (f", extrapolated per layer from {' and '.join(map(str, result.extrapolated_from_layers))}"
            f"-layer compiles")
  if result.compile_seconds:
    how += f", {result.compile_seconds:.1f} s"
  fit = (f"fits, {100 * result.headroom:.0f}% free" if result.fits
         else f"does NOT fit: {gib(memory.total - result.device_memory_bytes)} over")
  lines = [
      f"gptjax plan | {config.name} on {target.name}: {target.num_devices} x {target.chip.name}, "
      f"mesh " + " ".join(f"{k}={v}" for k, v in result.mesh.items()),
      f"  settings : batch {settings['batch_size']} x {settings['grad_accum_steps']} accumulation "
      f"x {config.block_size} tokens = {result.tokens_per_step:,} tokens/step, {settings['dtype']}, "
      f"remat {'on' if settings['remat'] else 'off'}",
      f"  method   : {result.method} ({how})",
      "",
      "memory per device",
      *[f"  {label:<30}{value / GiB:>9.2f} GiB" for label, value in (
          ("parameters (float32)", memory.params), ("optimizer state (AdamW)", memory.optimizer),
          ("gradients (float32)", memory.gradients),
          ("activations and temporaries", memory.activations), ("compiled program", memory.code),
          ("batch and other", memory.other))],
      f"  {'total' + (' (at least)' if result.memory_is_lower_bound else ''):<30}"
      f"{memory.total / GiB:>9.2f} GiB of {gib(result.device_memory_bytes)}"
      f" ({target.chip.memory_note or 'device memory'}): {fit}",
      *([f"  {'measured peak':<30}{result.measured_peak_bytes / GiB:>9.2f} GiB"]
        if result.measured_peak_bytes else []),
      "",
      f"speed ({result.step_time_source or 'unknown'})",
  ]
  if result.step_seconds:
    lines += [f"  step time          : {result.step_seconds * 1000:.1f} ms",
              f"  tokens/s           : {result.tokens_per_second:,.0f}",
              f"  1000 iterations    : {format_duration(1000 * result.step_seconds)}"]
    if result.mfu is not None:
      lines.append(f"  MFU (estimated)    : {100 * result.mfu:.1f}% of {target.num_devices} x "
                   f"{target.chip.peak_flops / 1e12:.0f} TFLOP/s (bf16 peak)")
  gen = result.generation
  lines += ["", f"generation (gptjax.sample, {gen.batch} sample(s) to block_size {config.block_size},"
            f" one device)",
            f"  parameters {gib(gen.params)} + KV cache {gib(gen.kv_cache)} + prompt pass "
            f"{gib(gen.working)} = {gib(gen.total)}: "
            + ("fits" if gen.total <= result.device_memory_bytes else "does NOT fit")]
  if result.notes:
    lines += ["", "notes", *[f"  - {note}" for note in result.notes]]
  return "\n".join(lines)


def format_search(found: list[Candidate], rejected: list[str], config: ml_collections.ConfigDict,
                  command: str, target: targets.Target, given: Estimate | None = None) -> str:
  """The config as given, the winner as a command, the runners-up, and why the rest were left
  out."""
  head = [f"as given: {_summary(given)}: "
          + ("fits" if given.headroom >= REQUIRED_HEADROOM else "does NOT fit with "
             f"{100 * REQUIRED_HEADROOM:.0f}% free"), ""] if given else []
  return "\n".join(head + _format_found(found, rejected, config, command, target))


def _format_found(found, rejected, config, command, target) -> list[str]:
  if not found:
    return [f"no configuration of {config.name} fits {target.name} with "
            f"{100 * REQUIRED_HEADROOM:.0f}% of memory free.", *[f"  - {line}" for line in rejected],
            "Fix: more devices (a larger --target) or a smaller model."]
  best = found[0]
  lines = [f"fastest configuration that fits {target.name} with >= "
           f"{100 * REQUIRED_HEADROOM:.0f}% of memory free ({best.estimate.method}):", "",
           f"  {command} {format_overrides(best.estimate.settings, config)}".rstrip(), "",
           "  " + _summary(best.estimate)]
  compiled = [c for c in found[1:] if c.estimate.method != estimate_lib.ANALYTIC]
  analytic = [c for c in found[1:] if c.estimate.method == estimate_lib.ANALYTIC]
  row = lambda c: (f"  {_summary(c.estimate)}  "  # noqa: E731
                   f"{format_overrides(c.estimate.settings, config) or '(as given)'}")
  if compiled:
    lines += ["", "runners-up, compiled:", *map(row, compiled[:5])]
  if analytic:
    lines += ["", "also fitting by the analytic model, not compiled (rooflines: compare them "
              "with each other, not with compiled times):", *map(row, analytic[:5])]
  lines += ["", "left out:", *[f"  - {line}" for line in rejected]] if rejected else []
  return lines


def _summary(result: Estimate) -> str:
  time = ("time unknown" if not result.step_seconds else
          f"{result.step_seconds * 1000:8.1f} ms/step, {result.tokens_per_second:>10,.0f} tok/s")
  return (f"{result.memory.total / GiB:6.2f} GiB/device ({100 * result.headroom:3.0f}% free), "
          f"{time} [{result.method}]")


def train_command(argv: list[str]) -> str:
  """`python -m gptjax.train` with the planner's --config and --config.* flags (not the search's
  own fields, which the search sets)."""
  searched = ("batch_size", "grad_accum_steps", "dtype", "remat", "mesh.")
  kept = []
  for arg in argv:
    if arg.startswith("--config="):  # a JSON preset reaches absl as <gptjax/config.py>:<file>
      kept.append("--config=" + arg.split("=", 1)[1].split(".py:")[-1])
    elif arg.startswith("--config.") and not arg[len("--config."):].startswith(searched):
      kept.append(arg)
  return " ".join(["python -m gptjax.train", *kept])


# --- python -m gptjax.plan --------------------------------------------------------------------------

def define_flags() -> None:
  from absl import flags
  from gptjax import cli
  cli.define_config_flag("Preset to plan")
  flags.DEFINE_string("target", "local", "Where it would run: local, tpu-v5e-1, tpu-v5e-8, "
                      "tpu-v4-8, tpu-v5p-8, tpu-v6e-8 (any Cloud size), gpu-h100-80gb, "
                      "gpu-h200-141gb, gpu-a100-40gb, gpu-a100-80gb, gpu-l4-24gb, gpu-rtx4090-24gb, "
                      "or N of them: 8xgpu-h100-80gb.")
  flags.DEFINE_bool("search", False, "Find the fastest batch split, remat, dtype and mesh that fit.")
  flags.DEFINE_bool("check", False, "Will it run there? Every problem as one line with its fix; "
                    "exit status 2 if there are any.")
  flags.DEFINE_enum("method", "auto", ["auto", "compile", "analytic"], "auto compiles where the "
                    "target's compiler is installed, else uses the analytic model.")
  flags.DEFINE_bool("fast", False, "Compile 1- and 2-layer versions and extrapolate per layer "
                    "instead of compiling every layer (minutes -> seconds for deep models).")
  flags.DEFINE_integer("verify", 3, "--search: compile this many of the fastest candidates.")
  flags.DEFINE_bool("measure", False, "--target=local: also run the step (allocating it) and "
                    "report its measured time and peak memory.")
  flags.DEFINE_integer("num_samples", 1, "Sequences sampled at once, for the generation memory.")
  flags.DEFINE_bool("json", False, "Print one JSON object instead of the report.")


def main(argv) -> None:
  from absl import flags
  from absl.app import UsageError
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments {argv[1:]}; fields are set as --config.<field>=<value>.")
  f = flags.FLAGS
  config = f.config
  if config is None:
    raise UserError("--config is required, e.g. --config=configs/500M_1024.py.")
  if f.target != "local":  # compile-only devices: keep JAX off any accelerator this machine has
    targets.compile_only_process()
  target = targets.parse_target(f.target)
  if f.target == "local":
    sharding.use_cpu_devices(config.cpu_devices)
    target = targets.local_target()
  config_lib.validate(config)
  log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
  if f.check:
    problems, result = check(config, target, fast=f.fast)
    if f.json:
      print(json.dumps(dict(ok=not problems, problems=problems,
                            estimate=result.to_json() if result else None), indent=1))
    else:
      if result:
        print(format_estimate(result, config))
      print("\ncheck: " + (f"{len(problems)} problem(s)" if problems else
                           f"OK, {config.name} will run on {target.name}"))
      for problem in problems:
        print(f"  - {problem}")
    sys.exit(2 if problems else 0)
  if f.search:
    found, rejected = search(config, target, verify=f.verify, fast=True, log=log)
    command = train_command(sys.argv[1:])
    if f.json:
      print(json.dumps(dict(
          best=found[0].estimate.to_json() if found else None,
          command=(f"{command} {format_overrides(found[0].estimate.settings, config)}".strip()
                   if found else None),
          runners_up=[c.estimate.to_json() for c in found[1:6]], rejected=rejected), indent=1))
    else:
      try:  # the config as given, compiled like the candidates where the target compiles
        given = estimate_lib.estimate(config, target, fast=estimate_lib.fast_is_exact(target))
      except ConfigError:  # its batch does not split over these devices
        given = None
      print(format_search(found, rejected, config, command, target, given))
    sys.exit(0 if found else 2)
  method = {"auto": "auto", "compile": "compile", "analytic": estimate_lib.ANALYTIC}[f.method]
  try:
    result = estimate_lib.estimate(config, target, method=method, fast=f.fast,
                                   num_samples=f.num_samples)
  except targets.CompileOnlyUnavailable as e:
    raise UserError(f"--method=compile: {e}") from e
  if f.measure:
    if f.target != "local":
      raise UserError(f"--measure runs the step here: use it with --target=local, not "
                      f"{f.target}.")
    estimate_lib.measure(config, result)
  print(json.dumps(result.to_json(), indent=1) if f.json else format_estimate(result, config))


def cli_main() -> None:
  """`python -m gptjax.plan`, tools/plan.py and the gptjax-plan console script."""
  from gptjax import cli
  cli.entry_point(main, define_flags, __doc__, takes_config=True)


if __name__ == "__main__":
  cli_main()
