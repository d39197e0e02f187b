"""Timing of the compiled train step and of sampling, for tools/bench.py and tools/bench_nanogpt.py.

The step is measured alone: compiled ahead of time, warmed up, each call waited for with
block_until_ready, the median of many calls reported. Memory: XLA's own account of the compiled
step (what gptjax.plan reports), beside the device allocator's measured peak where there is one.
`train_loop_steps` runs the real training one step per call, for timing against another engine.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gptjax import data as data_lib
from gptjax import sharding
from gptjax.config import ModelConfig
from gptjax.model import GPT
from gptjax.monitor import device_peak_flops, mfu
from gptjax.params import count_params, flops_per_token
from gptjax.sample import generate
from gptjax.step import build, compile_train_step, global_batch, loss_fn, mesh_context


def _median_seconds(fn, repeats: int) -> float:
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
  setup = build(config, mesh)
  start = time.perf_counter()
  compiled = compile_train_step(setup, config)
  compile_s = time.perf_counter() - start
  rng = np.random.default_rng(0)
  windows = rng.integers(0, min(config.vocab_size, 256), dtype=np.int32,
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
    step_s = _median_seconds(one_step, steps)
  tokens = config.batch_size * config.grad_accum_steps * config.block_size
  model_config = ModelConfig.from_config(config)
  memory = compiled.memory_analysis()
  planned = (memory.argument_size_in_bytes + memory.temp_size_in_bytes
             + memory.generated_code_size_in_bytes
             + max(0, memory.output_size_in_bytes - memory.alias_size_in_bytes))
  try:
    peak_in_use = jax.local_devices()[0].memory_stats().get("peak_bytes_in_use")
  except Exception:  # CPU devices keep no allocator statistics
    peak_in_use = None
  return dict(params=count_params(model_config).total, compile_s=compile_s, step_ms=1000 * step_s,
              tokens_per_second=tokens / step_s,
              mfu=mfu(flops_per_token(model_config) * tokens / step_s, jax.device_count(),
                      device_peak_flops()),
              planned_bytes=planned, peak_bytes_in_use=peak_in_use)


def train_loop_steps(config: ml_collections.ConfigDict) -> Callable[[int], float]:
  """gptjax's training one step per call, as gptjax.train's loop runs it: step(it) draws step it's
  batch from the config's corpus (data.train_batch), runs the compiled train step on it and waits
  for its loss, which it returns. The first call after this returns is already compiled.

  The config is validated and its CPU devices set up by the caller (before JAX starts); the token
  cache is written under config.out_dir.
  """
  mesh = sharding.make_mesh(config)
  setup = build(config, mesh)
  compiled = compile_train_step(setup, config)
  tokens = data_lib.prepare(config).train
  rows = sharding.process_batch_rows(mesh, config.batch_size)
  with mesh_context(mesh):
    holder = {"state": setup.init(jax.random.key(config.seed))}

  def step(it: int) -> float:
    windows = data_lib.train_batch(tokens, config.seed, it, config.grad_accum_steps,
                                   config.batch_size, config.block_size, rows)
    holder["state"], metrics = compiled(holder["state"],
                                        global_batch(windows, mesh, config.batch_size))
    return float(metrics["loss"])

  return step


def bench_sampling(config: ml_collections.ConfigDict, new_tokens: int = 100,
                   num_samples: int = 1) -> dict:
  """Tokens/s of KV-cache decoding against re-running the full forward pass for every token."""
  model = GPT(dataclasses.replace(ModelConfig.from_config(config), dropout=0.0))
  params = jax.jit(lambda t: nn.meta.unbox(model.init(jax.random.key(0), t)["params"]))(
      jnp.zeros((1, config.block_size), jnp.int32))
  new_tokens = min(new_tokens, config.block_size - 1)
  prompt = [1]
  generate(model, params, prompt, 4, num_samples=num_samples)  # compile
  cached_s = _median_seconds(lambda: generate(model, params, prompt, new_tokens,
                                              num_samples=num_samples), 3)

  forward = jax.jit(lambda p, t: model.apply({"params": p}, t))
  tokens = jnp.zeros((num_samples, config.block_size), jnp.int32)
  forward(params, tokens).block_until_ready()

  def uncached():  # nanoGPT's loop: a full forward over the (padded) context for every token
    logits = None
    for _ in range(new_tokens):
      logits = forward(params, tokens)
    return logits

  uncached_s = _median_seconds(uncached, 1)
  return dict(kv_cache_tokens_per_second=new_tokens * num_samples / cached_s,
              full_forward_tokens_per_second=new_tokens * num_samples / uncached_s,
              speedup=uncached_s / cached_s)


def split_loss(model: GPT, params, tokens: np.ndarray, batch_size: int = 128) -> tuple[float, int]:
  """The exact mean next-token loss over a whole split, and the number of tokens it predicts.

  The split is cut into consecutive windows of block_size + 1 tokens overlapping by one, so every
  token after the first is predicted once, with 0 to block_size - 1 tokens of context, as in
  training. No sampling: unlike the eval_iters estimate, two runs of it on one model agree exactly.
  The split's last (len(tokens) - 1) mod block_size tokens, less than one window, are not predicted
  (51 of tiny Shakespeare's 111,539 val targets at block 64); the count returned says how many are.
  """
  T = model.config.block_size
  n = (len(tokens) - 1) // T
  windows = data_lib.windows(np.asarray(tokens), np.arange(n) * T, T + 1)
  batch_loss = jax.jit(lambda p, w: loss_fn(p, model, w) * w.shape[0])
  total = sum(float(batch_loss(params, jnp.asarray(windows[i:i + batch_size])))
              for i in range(0, n, batch_size))
  return total / n, n * T
