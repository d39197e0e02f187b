"""The train step measured on this machine's devices: `plan --measure` and tools/bench.py.

The step is measured alone: compiled ahead of time, warmed up, each call waited for with
block_until_ready, the median of many calls reported. Memory: XLA's own account of the compiled
step (what gptjax.plan reports), beside the device allocator's measured peak where there is one.
"""

from __future__ import annotations

import statistics
import time

import jax
import ml_collections
import numpy as np

from gptjax import sharding
from gptjax.config import ModelConfig
from gptjax.devices import mfu, peak_flops
from gptjax.params import count_params, flops_per_token
from gptjax.planner.estimate import Estimate
from gptjax.planner import fit
from gptjax.step import global_batch, mesh_context


def median_seconds(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def bench_train_step(config: ml_collections.ConfigDict, steps: int = 20, warmup: int = 3) -> dict:
  """Compile time, median ms/step, tokens/s, MFU and memory of one config's train step.

  Memory: `planned_bytes` is XLA's account of the compiled step per device (what the planner
  reads), `peak_bytes_in_use` the device allocator's measured peak (GPUs and TPUs; None on CPU).
  """
  mesh = sharding.make_mesh(config)
  start = time.perf_counter()
  config, setup, compiled = fit.compile_train_step(config, mesh)  # remat "auto" decided here
  compile_s = time.perf_counter() - start
  rng = np.random.default_rng(0)
  windows = rng.integers(0,
                         min(config.vocab_size, 256),
                         dtype=np.int32,
                         size=(config.grad_accum_steps, config.batch_size, config.block_size + 1))
  with mesh_context(mesh):
    state = setup.init(jax.random.key(0))
    batch = global_batch(windows, mesh, config.batch_size)
    holder = {"state": state}

    def one_step():
      holder["state"], metrics = compiled(holder["state"], batch)
      return metrics["loss"]

    for _ in range(warmup):
      jax.block_until_ready(one_step())
    step_s = median_seconds(one_step, steps)
  tokens = config.batch_size * config.grad_accum_steps * config.block_size
  model_config = ModelConfig.from_config(config)
  memory = compiled.memory_analysis()
  planned = (memory.argument_size_in_bytes + memory.temp_size_in_bytes +
             memory.generated_code_size_in_bytes +
             max(0, memory.output_size_in_bytes - memory.alias_size_in_bytes))
  try:
    peak_in_use = jax.local_devices()[0].memory_stats().get("peak_bytes_in_use")
  except Exception:  # CPU devices keep no allocator statistics
    peak_in_use = None
  return dict(params=count_params(model_config).total,
              compile_s=compile_s,
              step_ms=1000 * step_s,
              tokens_per_second=tokens / step_s,
              mfu=mfu(
                  flops_per_token(model_config) * tokens / step_s, jax.device_count(),
                  peak_flops()),
              planned_bytes=planned,
              peak_bytes_in_use=peak_in_use)


def measure(config: ml_collections.ConfigDict, result: Estimate, steps: int = 10) -> None:
  """Runs the step on this machine's devices (allocating it) and records the measured step time
  and peak memory in `result`, beside the planned figures."""
  figures = bench_train_step(config, steps=steps, warmup=2)
  if result.step_seconds:
    planned = "expected" if result.gpu_efficiency else (
        "a lower bound" if result.step_time_is_lower_bound else "estimated")
    result.notes.append(f"planned before measuring: {1000 * result.step_seconds:.1f} ms a step "
                        f"({planned}: {result.step_time_source})")
  result.planned_step_seconds = result.step_seconds
  result.step_seconds = figures["step_ms"] / 1000
  result.step_time_source = f"measured: median of {steps} steps on this machine"
  result.step_time_is_lower_bound, result.gpu_efficiency = False, None
  peak = figures["peak_bytes_in_use"]
  if peak is None:  # CPU: the whole process's peak resident memory (Python and JAX included)
    try:
      import resource
    except ImportError:  # Windows: the CPU's peak is not measured
      return
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result.notes.append("measured peak: the process's peak resident memory (ru_maxrss), which "
                        "includes Python, JAX and the compiler, not only the step's buffers")
  result.measured_peak_bytes = peak
