"""Times the train step and sampling of a preset on this machine's devices, and prints a table.

  python tools/bench.py --config=configs/recipes/shakespeare_char_cpu.py
  python tools/bench.py --config=configs/small.py --config.dtype=bfloat16 --steps=50
  python tools/bench.py --config=configs/tiny_char.py --config.remat=True --sampling=False
  python tools/bench.py --config=my_preset.json

It takes the presets `python -m gptjax.train` takes (.py or nanoGPT-style .json, with
--config.<field>=<value> overrides), checked the same way.
"""

from __future__ import annotations

import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from absl import flags  # noqa: E402

from gptjax import cli, sharding  # noqa: E402
from gptjax.benchmark import bench_sampling, bench_train_step  # noqa: E402
from gptjax.config import validate  # noqa: E402
from gptjax.errors import UserError  # noqa: E402


def define_flags() -> None:
  cli.define_config_flag("Preset to benchmark")
  flags.DEFINE_integer("steps", 20, "Timed train steps (after warm-up); the median is shown.")
  flags.DEFINE_bool("sampling", True, "Also time KV-cache sampling against full forwards.")
  flags.DEFINE_integer("new_tokens", 100, "Tokens generated when timing sampling.")


def _fmt(value, spec: str) -> str:
  return "n/a" if value is None else format(value, spec)


def main(argv) -> None:
  f = flags.FLAGS
  config = f.config
  if config is None:
    raise UserError("--config is required, e.g. --config=configs/tiny_char.py.")
  validate(config)
  sharding.use_cpu_devices(config.cpu_devices)  # before JAX starts its backends
  device = jax.devices()[0]
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores | "
        f"jax {jax.__version__} | {jax.device_count()} x {device.device_kind} ({device.platform})")
  step = bench_train_step(config, steps=f.steps)
  print(f"\n{config.name}: {step['params']:,} params, mesh {dict(sharding.make_mesh(config).shape)}, batch {config.batch_size} x "
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
  cli.entry_point(main, define_flags, __doc__, takes_config=True)
