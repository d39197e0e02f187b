"""What `python -m gptjax.accelerator_check` measures, one step at a time, each in its own process.

  devices   versions (jax, jaxlib, flax, the driver), the devices JAX sees, and whether a GPU or TPU
            this machine has is the one JAX uses (against nvidia-smi, /dev/accel*)
  plan      `plan --measure` beside the plan made without the hardware, per preset and attention
  sampler   the sampler's tokens/s with the KV cache
  loss      5 training steps of each fused attention path against XLA's attention
  profile   a few train steps under jax.profiler, the trace kept

Each step runs in a process of its own (`--step=<name>`), so that one that fails, hangs or runs
out of device memory is reported and the rest still run, and so that each lets go of the device
(a TPU is held by one process at a time) before the next starts. Full sizes on a GPU or TPU, tiny
ones on a CPU (`--quick`): the same code either way.
"""

from __future__ import annotations

import glob
import importlib.metadata
import json
import os
import platform as platform_lib
import shutil
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np

from gptjax import config as config_lib
from gptjax import devices as devices_lib
from gptjax import presets, sharding
from gptjax.errors import ConfigError, UserError

PLAN_PRESETS = ("gpt2", "350M_1024")
QUICK_PRESET = "tiny_char"
# --quick: a model small enough that every step runs in seconds on a CPU.
QUICK_OVERRIDES = dict(n_layer=2,
                       n_head=2,
                       n_embd=64,
                       block_size=64,
                       batch_size=4,
                       grad_accum_steps=1,
                       cpu_devices=1)
# Models of the short steps on an accelerator: the loss comparison and the trace (GPT-Small's
# shapes, 256 tokens: fused kernels want a multiple of 128), and the sampler (GPT-2 124M).
SMALL_PRESET = "small"
SAMPLER_PRESET = "gpt2"
LOSS_STEPS = 5
# The platforms each attention path runs on; a value the config accepts that is not listed here
# is tried everywhere.
ATTENTION_PLATFORMS = {
    "xla": ("cpu", "gpu", "tpu"),
    "cudnn": ("gpu",),
    "splash": ("tpu",),
    "flash": ("tpu",)
}
VERSIONED = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "ml_collections", "numpy",
             "libtpu", "jax-cuda12-plugin", "jax-cuda12-pjrt", "jax-cuda13-plugin",
             "nvidia-cudnn-cu12", "gptjax")


def attention_paths() -> list[str]:
  """The attention values the config's validation accepts, "auto" aside (it picks one of them)."""
  candidates = [*getattr(config_lib, "ATTENTION_IMPLEMENTATIONS", ()), *ATTENTION_PLATFORMS]
  accepted = []
  for name in dict.fromkeys(candidates):
    if name == "auto":
      continue
    config = presets.load(QUICK_PRESET)
    config.update(dict(dtype="bfloat16", dropout=0.0, attention=name))
    try:
      config_lib.validate(config)
    except ConfigError as e:
      if "attention" in str(e):
        continue
    accepted.append(name)
  return accepted


def available_on(attention: str, platform: str) -> bool:
  return platform in ATTENTION_PLATFORMS.get(attention, (platform,))


def preset_config(preset: str, quick: bool, **overrides) -> ml_collections.ConfigDict:
  config = presets.load(preset)
  config.update({**(QUICK_OVERRIDES if quick else {}), **overrides})
  return config


def override_flags(preset: str, quick: bool, **overrides) -> list[str]:
  """The same config as `preset_config`, as a gptjax command's flags."""
  values = {**(QUICK_OVERRIDES if quick else {}), **overrides}
  return [f"--config={preset}", *(f"--config.{key}={value}" for key, value in values.items())]


def _platform() -> str:
  return devices_lib.platform_of(jax.devices()[0])


def _accelerator_dtype() -> str:
  return "float32" if _platform() == "cpu" else "bfloat16"


# --- devices ------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
  found = {"python": platform_lib.python_version()}
  for name in VERSIONED:
    try:
      found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return found


def nvidia_smi() -> list[dict] | None:
  """The GPUs nvidia-smi lists (name, driver, memory), None without nvidia-smi."""
  command = shutil.which("nvidia-smi")
  if command is None:
    return None
  try:
    listed = subprocess.run(
        [command, "--query-gpu=index,name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=30)
  except (OSError, subprocess.SubprocessError) as e:
    return [dict(error=str(e))]
  if listed.returncode != 0:
    return [dict(error=(listed.stderr or listed.stdout).strip()[:300])]
  keys = ("index", "name", "driver_version", "memory_total")
  return [
      dict(zip(keys, (part.strip()
                      for part in line.split(","))))
      for line in listed.stdout.strip().splitlines()
  ]


def devices_step() -> dict:
  """Versions, the devices JAX sees, and whether a GPU or TPU this machine has is the one used."""
  from gptjax.planner import targets
  hardware = devices_lib.accelerator_hardware()
  devices = jax.devices()
  platform = devices_lib.platform_of(devices[0])
  smi = nvidia_smi()
  accel_files = sorted(glob.glob("/dev/accel*"))
  kind = devices[0].device_kind
  result = dict(versions=versions(),
                platform=platform,
                device_kind=kind,
                device_count=len(devices),
                process_count=jax.process_count(),
                devices=[str(d) for d in devices[:16]],
                hardware=hardware,
                nvidia_smi=smi,
                accel_files=accel_files,
                cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
                jax_platforms=os.environ.get("JAX_PLATFORMS"),
                deviceless_target=targets.deviceless_name(kind, platform, len(devices)))
  try:
    devices_lib.check_accelerator_used(allow_cpu=False)
    refused = None
  except UserError as e:
    refused = str(e)
  if hardware is None:
    used, verdict = True, f"no GPU or TPU on this machine: JAX runs on the {platform.upper()}"
  elif refused or platform == "cpu":
    used, verdict = False, refused or (f"this machine has a {hardware.upper()}, but JAX runs on "
                                       f"the CPU ($JAX_PLATFORMS={result['jax_platforms']})")
  else:
    listed = len(smi or []) if hardware == "gpu" else len(accel_files)
    source = "nvidia-smi" if hardware == "gpu" else "/dev/accel*"
    used = platform == hardware
    verdict = (f"JAX runs on {len(devices)} {kind} device(s) ({platform}); {source} lists "
               f"{listed}")
    if used and listed and listed != len(devices):
      verdict += " (a different count: CUDA_VISIBLE_DEVICES, or chips with more than one core)"
  result["accelerator_used"] = dict(ok=used, verdict=verdict)
  return result


# --- the sampler ----------------------------------------------------------------------------------


def sampler_step(quick: bool, new_tokens: int) -> dict:
  """Tokens/s of gptjax's sampler (KV cache, prefill + decode) on a randomly initialised model."""
  import flax.linen as nn
  import jax.numpy as jnp

  from gptjax import generate
  from gptjax.config import ModelConfig
  from gptjax.model import GPT
  preset = QUICK_PRESET if quick else SAMPLER_PRESET
  config = preset_config(preset, quick, dtype=_accelerator_dtype())
  model = GPT(ModelConfig.from_config(config).for_platform(_platform()))
  params = jax.jit(lambda: nn.meta.unbox(
      model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]))()
  model = generate.on_this_device(model)
  sampling = generate.Sampling(0.8, 200, 1.0, config.vocab_size, -1)
  timings: dict = {}
  drawn = sum(piece.shape[1]
              for piece in generate.stream(model,
                                           generate.decode_params(model, params), [0] * 8,
                                           new_tokens,
                                           seed=0,
                                           sampling=sampling,
                                           timings=timings))
  return dict(preset=preset,
              dtype=model.config.dtype,
              prompt_tokens=8,
              new_tokens=drawn,
              compile_s=timings["compile_s"],
              decode_s=timings["decode_s"],
              tokens_per_second=drawn / timings["decode_s"])


# --- training steps: losses and a trace -----------------------------------------------------------


def _compiled_step(config: ml_collections.ConfigDict):
  from gptjax.planner import fit
  sharding.use_cpu_devices(config.cpu_devices)
  mesh = sharding.make_mesh(config)
  _, setup, compiled = fit.compile_train_step(config, mesh)  # remat "auto" decided here
  return mesh, setup, compiled


def batches(config: ml_collections.ConfigDict, steps: int, seed: int = 0) -> list[np.ndarray]:
  """The check's token batches: (A, B, T+1) windows drawn uniformly from the vocabulary."""
  rng = np.random.default_rng(seed)
  shape = (config.grad_accum_steps, config.batch_size, config.block_size + 1)
  return [rng.integers(0, config.vocab_size, size=shape, dtype=np.int32) for _ in range(steps)]


def train_losses(config: ml_collections.ConfigDict, steps: int) -> dict:
  """The losses of `steps` train steps from the initial state (jax.random.key(config.seed)) on
  `batches(config, steps)`, and the parameter count of that state."""
  from gptjax.step import global_batch, mesh_context
  mesh, setup, compiled = _compiled_step(config)
  losses = []
  with mesh_context(mesh):
    state = setup.init(jax.random.key(config.seed))
    counted = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    for windows in batches(config, steps):
      state, metrics = compiled(state, global_batch(windows, mesh, config.batch_size))
      losses.append(float(metrics["loss"]))
  return dict(losses=losses, params_counted=counted)


def loss_step(quick: bool, paths: list[str]) -> dict:
  """LOSS_STEPS steps of each attention path from the same state on the same batches, fused paths
  against XLA's. Dropout off (fused kernels have no attention dropout)."""
  platform = _platform()
  preset = QUICK_PRESET if quick else SMALL_PRESET
  dtype = _accelerator_dtype()
  tolerance = 1e-3 if dtype == "float32" else 5e-2
  overrides = dict(dtype=dtype, dropout=0.0) if quick else dict(
      dtype=dtype, dropout=0.0, batch_size=8, grad_accum_steps=1)
  runs = {}
  for path in paths:
    if not available_on(path, platform):
      runs[path] = dict(available=False, note=f"not available on {platform}")
      continue
    config = preset_config(preset, quick, attention=path, **overrides)
    try:
      runs[path] = dict(available=True, **train_losses(config, LOSS_STEPS))
    except Exception as e:  # a path that fails here is reported beside the others
      runs[path] = dict(available=True, error=f"{type(e).__name__}: {str(e)[:500]}")
  reference = runs.get("xla", {}).get("losses")
  for path, run in runs.items():
    if path != "xla" and reference and run.get("losses"):
      run["max_abs_diff_vs_xla"] = max(abs(a - b) for a, b in zip(run["losses"], reference))
      run["within_tolerance"] = run["max_abs_diff_vs_xla"] <= tolerance
  return dict(preset=preset,
              overrides=overrides,
              quick_overrides=QUICK_OVERRIDES if quick else {},
              steps=LOSS_STEPS,
              batch_seed=0,
              tolerance=tolerance,
              runs=runs)


def profile_step(quick: bool, trace_dir: str, steps: int = 3) -> dict:
  """A few train steps under jax.profiler.trace; the trace files it wrote."""
  from gptjax.step import global_batch, mesh_context
  preset = QUICK_PRESET if quick else SMALL_PRESET
  config = preset_config(preset, quick, dtype=_accelerator_dtype(), dropout=0.0)
  mesh, setup, compiled = _compiled_step(config)
  with mesh_context(mesh):
    state = setup.init(jax.random.key(config.seed))
    windows = [global_batch(w, mesh, config.batch_size) for w in batches(config, 2 + steps)]
    for batch in windows[:2]:  # warm up outside the trace
      state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    with jax.profiler.trace(trace_dir):
      for batch in windows[2:]:
        state, metrics = compiled(state, batch)
      jax.block_until_ready(metrics)
    traced_s = time.perf_counter() - start
  files = sorted(
      os.path.relpath(path, trace_dir)
      for path in glob.glob(os.path.join(trace_dir, "**", "*"), recursive=True)
      if os.path.isfile(path))
  return dict(preset=preset,
              steps=steps,
              traced_s=traced_s,
              files=files,
              bytes=sum(os.path.getsize(os.path.join(trace_dir, f)) for f in files),
              view="tensorboard --logdir <dir> (Profile tab), or xprof, or Perfetto")


# --- plan against measurement ---------------------------------------------------------------------


def plan_row(planned: dict | None, measured: dict | None) -> dict:
  """The figures of one preset and attention path: the plan without the hardware (or, on a CPU,
  of this machine) and the step measured here."""
  row = {}
  if planned:
    row["planned"] = dict(target=planned["target"],
                          method=planned["method"],
                          step_ms=_ms(planned["step_seconds"]),
                          step_is_lower_bound=planned["step_time_is_lower_bound"],
                          step_source=planned["step_time_source"],
                          roofline_ms=_ms(planned["roofline_seconds"]),
                          gpu_efficiency=planned["gpu_efficiency"],
                          mfu=planned["mfu"],
                          mfu_roofline=planned["mfu_roofline"],
                          total_bytes=planned["total_bytes_per_device"],
                          fits=planned["fits"],
                          tokens_per_step=planned["tokens_per_step"],
                          compile_s=planned["compile_seconds"])
  if measured:
    row["measured"] = dict(step_ms=_ms(measured["step_seconds"]),
                           mfu=measured["mfu"],
                           tokens_per_second=measured["tokens_per_second"],
                           peak_bytes_in_use=measured["measured_peak_bytes"],
                           planned_bytes_here=measured["total_bytes_per_device"],
                           local_roofline_ms=_ms(measured["roofline_seconds"]),
                           notes=measured["notes"])
  if planned and measured and planned["step_seconds"]:
    row["measured_over_planned"] = measured["step_seconds"] / planned["step_seconds"]
  return row


def plan_before_measuring(measured: dict) -> dict:
  """The plan `plan --measure` made before it measured (its JSON keeps the step time)."""
  planned_s, measured_s = measured["planned_step_seconds"], measured["step_seconds"]
  scale = measured_s / planned_s if planned_s and measured_s else None
  source = next((note for note in measured["notes"] if note.startswith("planned before")), "")
  return {
      **measured, "step_seconds": planned_s,
      "step_time_source": source.split("(", 1)[-1].rstrip(")") if source else "",
      "step_time_is_lower_bound": "lower bound" in source,
      "mfu": measured["mfu"] * scale if measured["mfu"] and scale else None
  }


def _ms(seconds: float | None) -> float | None:
  return None if seconds is None else 1000 * seconds


def write_json(path: str, value) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=1, default=str)
  os.replace(tmp, path)


def run_worker(step: str, out_dir: str, quick: bool, paths: list[str], new_tokens: int) -> None:
  """`--step=<name>`: runs one step in this process and writes <out_dir>/steps/<name>.json."""
  if step == "devices":
    result = devices_step()
  elif step == "sampler":
    result = sampler_step(quick, new_tokens)
  elif step == "loss":
    result = loss_step(quick, paths)
  elif step == "profile":
    result = profile_step(quick, os.path.join(out_dir, "trace"))
  else:
    raise UserError(f"--step={step!r} is not a step. Fix: one of devices, sampler, loss, profile.")
  os.makedirs(os.path.join(out_dir, "steps"), exist_ok=True)
  write_json(os.path.join(out_dir, "steps", f"{step}.json"), result)
  print(f"{step}: done", file=sys.stderr, flush=True)
