"""XLA's own figures for the train step compiled for a target's devices, with or without them.

`compile_step` lowers and compiles exactly the step `python -m gptjax.train` would run (the same
`build()`, shardings and batch) without allocating anything, and `figures_of` reads XLA's
accounts: `memory_analysis()` per device, `cost_analysis()` on TPUs (time, FLOPs, bytes), and on
GPUs (no cost analysis there) the per-kernel roofline of the optimised program.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time

import jax
import ml_collections

from gptjax import devices as devices_lib
from gptjax import sharding, step
from gptjax.errors import out_of_memory_line
from gptjax.planner import roofline, targets

# --fast compiles these depths and extrapolates per layer, exact on GPUs and CPUs; TPUs are not
# extrapolated (fast_is_exact: docs/performance.md has the figures).
EXTRAPOLATION_LAYERS = (1, 2)
# Custom calls libtpu 0.0.42's cost model prices at -1 s each (seen: ConcatBitcast in the backward
# pass; X64Combine beside every rng-bit-generator of rbg dropout).
UNPRICED_TPU_CALLS = ("ConcatBitcast", "X64Combine", "X64SplitLow", "X64SplitHigh")


def lower_train_step(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
  """(Setup, Lowered) of exactly the step gptjax.train runs, for `mesh`'s devices."""
  setup = step.build(config, mesh)
  with step.mesh_context(mesh):
    return setup, setup.train_step.lower(setup.abstract_state, step.abstract_batch(config, mesh))


def per_device_bytes(tree) -> int:
  """Bytes one device holds of a pytree of ShapeDtypeStructs with shardings (the largest shard)."""
  return sum(
      math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
      for leaf in jax.tree.leaves(tree))


@dataclasses.dataclass
class Compiled:
  """The figures of one compile, all per device."""
  arguments: int
  outputs_not_aliased: int
  temp: int
  code: int
  flops: float | None  # per device
  bytes_accessed: float | None  # per device
  optimal_seconds: float | None  # XLA's TPU cost model
  kernel_seconds: float | None  # GPUs: roofline.kernel_roofline of the optimised program
  seconds: float
  refused: str | None = None  # XLA's words when it refused the program (too big): temp is
  # then the lower bound it gave
  @property
  def total(self) -> int:
    """What the step occupies on a device: inputs, temporaries, new outputs and the program."""
    return self.arguments + self.temp + self.outputs_not_aliased + self.code

  def extrapolate(self, other: "Compiled", steps: int) -> "Compiled":
    """self at depth l, other at l + 1: the figures `steps` layers past other, linearly (a layer
    never takes less than nothing: a negative difference counts as none)."""

    def line(a, b):
      return None if a is None or b is None else b + steps * max(0, b - a)

    return Compiled(arguments=other.arguments,
                    outputs_not_aliased=other.outputs_not_aliased,
                    temp=int(line(self.temp, other.temp)),
                    code=int(line(self.code, other.code)),
                    flops=line(self.flops, other.flops),
                    bytes_accessed=line(self.bytes_accessed, other.bytes_accessed),
                    optimal_seconds=line(self.optimal_seconds, other.optimal_seconds),
                    kernel_seconds=line(self.kernel_seconds, other.kernel_seconds),
                    seconds=self.seconds + other.seconds,
                    refused=self.refused or other.refused)


def compile_step(config: ml_collections.ConfigDict, devices) -> Compiled:
  start = time.perf_counter()
  mesh = sharding.make_mesh(config, devices=devices)
  setup, lowered = lower_train_step(config, mesh)
  try:
    compiled = lowered.compile()
  except Exception as e:  # noqa: BLE001  (libtpu refuses a program larger than the chip's HBM)
    temp = _refused_temporaries(e)
    if temp is None:
      raise
    arguments = per_device_bytes(setup.abstract_state) + per_device_bytes(
        step.abstract_batch(config, mesh))
    return Compiled(arguments=arguments,
                    outputs_not_aliased=0,
                    temp=temp,
                    code=0,
                    flops=None,
                    bytes_accessed=None,
                    optimal_seconds=None,
                    kernel_seconds=None,
                    seconds=time.perf_counter() - start,
                    refused=out_of_memory_line(e))
  return figures_of(compiled, devices[0], time.perf_counter() - start)


def _refused_temporaries(error: Exception) -> int | None:
  """The temporaries XLA says a program needs when it refuses to compile it for lack of memory:
  libtpu's 'the total memory required for HLO temporaries (17.04G) exceeds available HBM'."""
  match = re.search(r"HLO temporaries \(([\d.]+)([KMGT])\)", str(error))
  if match is None:
    return None
  return int(float(match.group(1)) * 1024**("KMGT".index(match.group(2)) + 1))


def figures_of(compiled, device=None, seconds: float = 0.0) -> Compiled:
  """Per-device memory, FLOPs, bytes and time of a compiled step, from XLA's analyses; on GPUs
  (which have no cost analysis) from the kernels of the optimised program."""
  memory = compiled.memory_analysis()
  cost = _cost(compiled)
  kernel_seconds = None
  chip = device is not None and devices_lib.known_chip(device.device_kind)
  if chip and chip.platform == "gpu":
    kernels = roofline.kernel_roofline(compiled.as_text(), chip.peak_flops, chip.peak_flops_fp32,
                                       chip.memory_bandwidth, chip.link_bandwidth)
    cost = {"flops": kernels["flops"], "bytes accessed": kernels["bytes"]}
    kernel_seconds = kernels["seconds"]
  optimal = cost.get("optimal_seconds")
  if optimal is not None and optimal < 0:
    # libtpu prices each custom call it cannot cost at -1 s; with them counted as free the figure
    # is XLA's estimate for everything else (checked against rooflines: docs/performance.md).
    targets_called = re.findall(r'custom_call_target="([^"]+)"', compiled.as_text())
    optimal += sum(name in UNPRICED_TPU_CALLS for name in targets_called)
  return Compiled(arguments=memory.argument_size_in_bytes,
                  outputs_not_aliased=max(0,
                                          memory.output_size_in_bytes - memory.alias_size_in_bytes),
                  temp=memory.temp_size_in_bytes,
                  code=memory.generated_code_size_in_bytes,
                  flops=cost.get("flops"),
                  bytes_accessed=cost.get("bytes accessed"),
                  optimal_seconds=optimal,
                  kernel_seconds=kernel_seconds,
                  seconds=seconds)


def _cost(stage) -> dict[str, float]:
  try:
    cost = stage.cost_analysis()
  except Exception:  # not every backend implements it
    return {}
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return dict(cost or {})


def fast_is_exact(target: targets.Target) -> bool:
  """Whether per-layer extrapolation matches full compiles there: to 0.05% on GPUs and CPUs;
  TPU steps are not linear in depth at 1-3 layers (docs/performance.md)."""
  return target.platform != "tpu"


def compiled_figures(config: ml_collections.ConfigDict, devices, fast: bool) -> Compiled:
  """One compile of the real step, or with `fast` two shallow ones extrapolated per layer."""
  if not fast or config.n_layer <= EXTRAPOLATION_LAYERS[-1]:
    return compile_step(config, devices)
  shallow = [
      compile_step(with_fields(config, n_layer=depth), devices) for depth in EXTRAPOLATION_LAYERS
  ]
  if shallow[0].refused:  # one layer is already too big: all of them are
    return dataclasses.replace(shallow[0], arguments=shallow[1].arguments)
  return shallow[0].extrapolate(shallow[1], config.n_layer - EXTRAPOLATION_LAYERS[1])


def with_fields(config: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(config.to_dict())
  config.update(fields)
  return config
