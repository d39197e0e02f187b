"""Times the train step and sampling of a preset on this machine's devices, and prints a table.

  python tools/bench.py --config=recipes/shakespeare_char_cpu
  python tools/bench.py --config=small --config.dtype=bfloat16 --steps=50
  python tools/bench.py --config=tiny_char --config.remat=True --sampling=False
  python tools/bench.py --config=my_preset.json

It takes the presets `python -m gptjax.train` takes (.py or nanoGPT-style .json, with
--config.<field>=<value> overrides), checked the same way.
"""

from __future__ import annotations

import os
import platform

from absl import flags

from gptjax import cli
from gptjax.errors import UserError


def define_flags(values) -> None:
  flags.DEFINE_integer("steps",
                       20,
                       "Timed train steps (after warm-up); the median is shown.",
                       flag_values=values)
  flags.DEFINE_bool("sampling",
                    True,
                    "Also time KV-cache sampling against full forwards.",
                    flag_values=values)
  flags.DEFINE_integer("new_tokens",
                       100,
                       "Tokens generated when timing sampling.",
                       flag_values=values)


def _fmt(value, spec: str) -> str:
  return "n/a" if value is None else format(value, spec)


def bench_sampling(config, new_tokens: int = 100, num_samples: int = 1) -> dict:
  """Tokens/s of KV-cache decoding against re-running the full forward pass for every token."""
  import dataclasses

  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from gptjax.config import ModelConfig
  from gptjax.generate import generate
  from gptjax.model import GPT
  from gptjax.planner.measure import median_seconds
  model = GPT(dataclasses.replace(ModelConfig.from_config(config), dropout=0.0))
  params = jax.jit(lambda t: nn.meta.unbox(model.init(jax.random.key(0), t)["params"]))(jnp.zeros(
      (1, config.block_size), jnp.int32))
  new_tokens = min(new_tokens, config.block_size - 1)
  prompt = [1]
  generate(model, params, prompt, 4, num_samples=num_samples)  # compile
  cached_s = median_seconds(
      lambda: generate(model, params, prompt, new_tokens, num_samples=num_samples), 3)

  forward = jax.jit(lambda p, t: model.apply({"params": p}, t))
  tokens = jnp.zeros((num_samples, config.block_size), jnp.int32)
  forward(params, tokens).block_until_ready()

  def uncached():  # nanoGPT's loop: a full forward over the (padded) context for every token
    logits = None
    for _ in range(new_tokens):
      logits = forward(params, tokens)
    return logits

  uncached_s = median_seconds(uncached, 1)
  return dict(kv_cache_tokens_per_second=new_tokens * num_samples / cached_s,
              full_forward_tokens_per_second=new_tokens * num_samples / uncached_s,
              speedup=uncached_s / cached_s)


def main(f) -> None:
  import jax
  from gptjax import sharding
  from gptjax.config import validate
  from gptjax.planner.measure import bench_train_step
  config = f.config
  if config is None:
    raise UserError("--config is required, e.g. --config=tiny_char.")
  validate(config)
  sharding.use_cpu_devices(config.cpu_devices)  # before JAX starts its backends
  device = jax.devices()[0]
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores | "
        f"jax {jax.__version__} | {jax.device_count()} x {device.device_kind} ({device.platform})")
  step = bench_train_step(config, steps=f.steps)
  print(
      f"\n{config.name}: {step['params']:,} params, mesh {dict(sharding.make_mesh(config).shape)}, batch {config.batch_size} x "
      f"{config.grad_accum_steps} x {config.block_size} tokens, dtype {config.dtype}, "
      f"remat {config.remat}")
  print(f"{'compile s':>10} {'ms/step':>10} {'tokens/s':>12} {'MFU':>8} {'planned MiB':>12} "
        f"{'peak MiB':>10}")
  print(f"{step['compile_s']:>10.2f} {step['step_ms']:>10.1f} {step['tokens_per_second']:>12,.0f} "
        f"{'n/a' if step['mfu'] is None else format(100 * step['mfu'], '.1f') + '%':>8} "
        f"{step['planned_bytes'] / 2**20:>12,.1f} "
        f"{_fmt(step['peak_bytes_in_use'] and step['peak_bytes_in_use'] / 2**20, ',.1f'):>10}")
  if f.sampling:
    s = bench_sampling(config, new_tokens=f.new_tokens)
    print(f"\nsampling, batch 1: KV cache {s['kv_cache_tokens_per_second']:,.1f} tok/s | "
          f"full forward per token {s['full_forward_tokens_per_second']:,.1f} tok/s | "
          f"cache speed-up {s['speedup']:.1f}x")


if __name__ == "__main__":
  cli.run_command(main, define_flags, __doc__, config="required")
