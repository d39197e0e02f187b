"""What a config needs on a target: memory per device and step time, compiled or analytic.

The engine of the fit planner (gptjax/plan.py). It compiles the train step `python -m gptjax.train`
would run (the same `build()`, shardings and batch) for the target's devices without allocating
anything, and reads XLA's own accounts: `memory_analysis()` per device and, on TPUs,
`cost_analysis()`'s time. Targets without their compile-only library (libtpu for TPUs, jax's CUDA
plugin for GPUs) get the analytic model of gptjax/params.py, calibrated against such compiles.
Every figure says where it comes from.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gptjax import params as params_lib
from gptjax import roofline, sharding, step, targets
from gptjax import config as config_lib
from gptjax.config import ModelConfig
from gptjax.optim import make_optimizer

COMPILED, DEVICELESS, ANALYTIC = "compiled", "compiled-deviceless", "analytic"
# --fast compiles these depths and extrapolates per layer: on GPUs equal to the full compile to
# 0.05% (from 2 and 3 layers: 2.2%). TPUs are not extrapolated (fast_is_exact): there a 2-layer
# step can need less than a 1-layer one (400M_1024 on v5e-8: 0.584, 0.538, 0.564 and 0.591 GiB of
# temporaries at 1-4 layers, 1.248 at 28).
EXTRAPOLATION_LAYERS = (1, 2)
# Custom calls libtpu 0.0.42's cost model prices at -1 s each (seen: ConcatBitcast in the backward
# pass; X64Combine beside every rng-bit-generator of rbg dropout).
UNPRICED_TPU_CALLS = ("ConcatBitcast", "X64Combine", "X64SplitLow", "X64SplitHigh")


@dataclasses.dataclass
class Memory:
  """Bytes per device of one train step."""
  params: int          # float32 parameters, as sharded
  optimizer: int       # AdamW's two moments (and its step count)
  gradients: int       # float32 gradients (and the accumulator with grad_accum_steps > 1)
  activations: int     # activations and every other temporary of the step
  code: int = 0        # the compiled program (TPUs keep it in HBM)
  other: int = 0       # the input batch and any output not written over its input

  @property
  def total(self) -> int:
    return self.params + self.optimizer + self.gradients + self.activations + self.code + self.other


@dataclasses.dataclass
class Generation:
  """Bytes of sampling `batch` sequences up to block_size on one device (gptjax.sample)."""
  batch: int
  params: int
  kv_cache: int
  working: int  # the prompt's pass: logits, one layer's attention scores and activations

  @property
  def total(self) -> int:
    return self.params + self.kv_cache + self.working


@dataclasses.dataclass
class Estimate:
  """What one config needs on one target, and where each figure comes from."""
  target: targets.Target
  method: str                       # COMPILED, DEVICELESS or ANALYTIC
  settings: dict[str, Any]          # the config fields that decide memory and speed
  mesh: dict[str, int]
  memory: Memory
  generation: Generation
  tokens_per_step: int
  model_flops_per_step: float       # 6N + 12LTC per token: what MFU counts
  step_seconds: float | None
  step_time_source: str
  roofline_seconds: float | None = None
  compile_seconds: float = 0.0
  extrapolated_from_layers: tuple[int, ...] | None = None
  measured_peak_bytes: int | None = None  # --measure: the allocator's (or on CPU the process's)
  memory_is_lower_bound: bool = False     # XLA refused the program: it needs at least this
  notes: list[str] = dataclasses.field(default_factory=list)

  @property
  def device_memory_bytes(self) -> int:
    return self.target.device_memory_bytes

  @property
  def fits(self) -> bool:
    return self.memory.total <= self.device_memory_bytes

  @property
  def headroom(self) -> float:
    """The share of the device's memory left free (negative: over by that share)."""
    return 1.0 - self.memory.total / self.device_memory_bytes if self.device_memory_bytes else 0.0

  @property
  def tokens_per_second(self) -> float | None:
    return self.tokens_per_step / self.step_seconds if self.step_seconds else None

  @property
  def mfu(self) -> float | None:
    peak = self.target.chip.peak_flops * self.target.num_devices
    if not self.step_seconds or not peak:
      return None
    return self.model_flops_per_step / (self.step_seconds * peak)

  def to_json(self) -> dict[str, Any]:
    memory = dataclasses.asdict(self.memory)
    return dict(
        target=self.target.name, method=self.method, device_kind=self.target.chip.name,
        devices=self.target.num_devices, mesh=self.mesh, settings=self.settings,
        memory_bytes_per_device={**memory, "total": self.memory.total},
        total_bytes_per_device=self.memory.total, device_memory_bytes=self.device_memory_bytes,
        fits=self.fits, headroom=self.headroom, memory_is_lower_bound=self.memory_is_lower_bound,
        step_seconds=self.step_seconds, step_time_source=self.step_time_source,
        roofline_seconds=self.roofline_seconds, tokens_per_step=self.tokens_per_step,
        tokens_per_second=self.tokens_per_second,
        seconds_per_1000_iters=None if self.step_seconds is None else 1000 * self.step_seconds,
        mfu=self.mfu, model_flops_per_step=self.model_flops_per_step,
        generation_bytes={**dataclasses.asdict(self.generation), "total": self.generation.total},
        compile_seconds=self.compile_seconds, measured_peak_bytes=self.measured_peak_bytes,
        extrapolated_from_layers=self.extrapolated_from_layers, notes=self.notes)


def planned_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The fields the search varies, as `--config.<field>` values."""
  return dict(batch_size=config.batch_size, grad_accum_steps=config.grad_accum_steps,
              dtype=config.dtype, remat=config.remat,
              mesh=dict(data=config.mesh.data, fsdp=config.mesh.fsdp, tensor=config.mesh.tensor))


def lower_train_step(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
  """(Setup, Lowered) of exactly the step gptjax.train runs, for `mesh`'s devices."""
  setup = step.build(config, mesh)
  with step.mesh_context(mesh):
    return setup, setup.train_step.lower(setup.abstract_state, step.abstract_batch(config, mesh))


def per_device_bytes(tree) -> int:
  """Bytes one device holds of a pytree of ShapeDtypeStructs with shardings (the largest shard)."""
  return sum(math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
             for leaf in jax.tree.leaves(tree))


@dataclasses.dataclass
class _Compiled:
  """The figures of one compile, all per device."""
  arguments: int
  outputs_not_aliased: int
  temp: int
  code: int
  flops: float | None           # per device
  bytes_accessed: float | None  # per device
  optimal_seconds: float | None  # XLA's TPU cost model
  kernel_seconds: float | None   # GPUs: roofline.kernel_roofline of the optimised program
  seconds: float
  refused: str | None = None     # XLA's words when it refused the program (too big): temp is
                                 # then the lower bound it gave
  @property
  def total(self) -> int:
    """What the step occupies on a device: inputs, temporaries, new outputs and the program."""
    return self.arguments + self.temp + self.outputs_not_aliased + self.code

  def extrapolate(self, other: "_Compiled", steps: int) -> "_Compiled":
    """self at depth l, other at l + 1: the figures `steps` layers past other, linearly (a layer
    never takes less than nothing: a negative difference counts as none)."""
    def line(a, b):
      return None if a is None or b is None else b + steps * max(0, b - a)
    return _Compiled(
        arguments=other.arguments, outputs_not_aliased=other.outputs_not_aliased,
        temp=int(line(self.temp, other.temp)), code=int(line(self.code, other.code)),
        flops=line(self.flops, other.flops), bytes_accessed=line(self.bytes_accessed,
                                                                  other.bytes_accessed),
        optimal_seconds=line(self.optimal_seconds, other.optimal_seconds),
        kernel_seconds=line(self.kernel_seconds, other.kernel_seconds),
        seconds=self.seconds + other.seconds, refused=self.refused or other.refused)


def _compile(config: ml_collections.ConfigDict, devices) -> _Compiled:
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
    return _Compiled(arguments=arguments, outputs_not_aliased=0, temp=temp, code=0, flops=None,
                     bytes_accessed=None, optimal_seconds=None, kernel_seconds=None,
                     seconds=time.perf_counter() - start, refused=out_of_memory_line(e))
  return figures_of(compiled, devices[0], time.perf_counter() - start)


def _refused_temporaries(error: Exception) -> int | None:
  """The temporaries XLA says a program needs when it refuses to compile it for lack of memory:
  libtpu's 'the total memory required for HLO temporaries (17.04G) exceeds available HBM'."""
  match = re.search(r"HLO temporaries \(([\d.]+)([KMGT])\)", str(error))
  if match is None:
    return None
  return int(float(match.group(1)) * 1024 ** ("KMGT".index(match.group(2)) + 1))


def figures_of(compiled, device=None, seconds: float = 0.0) -> _Compiled:
  """Per-device memory, FLOPs, bytes and time of a compiled step, from XLA's analyses; on GPUs
  (which have no cost analysis) from the kernels of the optimised program."""
  memory = compiled.memory_analysis()
  cost = _cost(compiled)
  kernel_seconds = None
  chip = device is not None and targets.known_chip(device.device_kind)
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
  return _Compiled(
      arguments=memory.argument_size_in_bytes,
      outputs_not_aliased=max(0, memory.output_size_in_bytes - memory.alias_size_in_bytes),
      temp=memory.temp_size_in_bytes, code=memory.generated_code_size_in_bytes,
      flops=cost.get("flops"), bytes_accessed=cost.get("bytes accessed"),
      optimal_seconds=optimal, kernel_seconds=kernel_seconds, seconds=seconds)


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


def compiled_figures(config: ml_collections.ConfigDict, devices, fast: bool) -> _Compiled:
  """One compile of the real step, or with `fast` two shallow ones extrapolated per layer."""
  if not fast or config.n_layer <= EXTRAPOLATION_LAYERS[-1]:
    return _compile(config, devices)
  shallow = [_compile(_with(config, n_layer=depth), devices) for depth in EXTRAPOLATION_LAYERS]
  if shallow[0].refused:  # one layer is already too big: all of them are
    return dataclasses.replace(shallow[0], arguments=shallow[1].arguments)
  return shallow[0].extrapolate(shallow[1], config.n_layer - EXTRAPOLATION_LAYERS[1])


def _with(config: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(config.to_dict())
  config.update(fields)
  return config


def state_bytes(config: ml_collections.ConfigDict, mesh) -> tuple[int, int]:
  """(params, optimizer state) bytes per device, from the shardings training gives them.

  `mesh` may be a jax.sharding.AbstractMesh: no device is needed.
  """
  architecture = ModelConfig(**ModelConfig.from_config(config).architecture())
  return _state_bytes(architecture, tuple(mesh.axis_sizes), config.grad_clip > 0)


@functools.lru_cache(maxsize=256)
def _state_bytes(architecture: ModelConfig, mesh_shape: tuple[int, ...], clip: bool):
  mesh = jax.sharding.AbstractMesh(mesh_shape, sharding.MESH_AXES)
  boxed = params_lib.abstract_params(architecture)
  param_shardings = sharding.logical_shardings(boxed, mesh)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.meta.unbox(boxed), param_shardings)
  optimizer_config = config_lib.get_base_config()
  optimizer_config.grad_clip = 1.0 if clip else 0.0
  tx = make_optimizer(optimizer_config)
  opt_state = jax.eval_shape(tx.init, abstract)
  opt_shardings = sharding.optimizer_shardings(tx, opt_state, param_shardings, mesh)
  opt_abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                              opt_state, opt_shardings)
  return per_device_bytes(abstract), per_device_bytes(opt_abstract)


# --- The estimate -----------------------------------------------------------------------------------

def estimate(config: ml_collections.ConfigDict, target: targets.Target, *, method: str = "auto",
             fast: bool = False, num_samples: int = 1) -> Estimate:
  """What `config` needs per device on `target`, and how fast its step runs there.

  Args:
    config: a validated config (the planner never allocates its state).
    target: from targets.parse_target.
    method: "auto" compiles where possible (local devices, or compile-only TPU/GPU devices when
      their library is installed) and falls back to "analytic"; "compile" insists on compiling.
    fast: compile 1- and 2-layer versions of the step and extrapolate per layer (for deep models
      whose full compile takes minutes on a small CPU).
    num_samples: sequences sampled at once, for the generation memory.
  Raises:
    targets.CompileOnlyUnavailable: method "compile" where the compile-only library is missing.
  """
  mesh_shape = sharding.mesh_shape(config, target.num_devices)
  sharding.validate_for_mesh(config, mesh_shape)
  param_bytes, optimizer_bytes = state_bytes(
      config, jax.sharding.AbstractMesh(mesh_shape, sharding.MESH_AXES))
  gradient_bytes = param_bytes * (2 if config.grad_accum_steps > 1 else 1)
  model = ModelConfig.from_config(config).for_platform(target.platform)
  tokens = config.batch_size * config.grad_accum_steps * config.block_size
  result = Estimate(
      target=target, method=ANALYTIC, settings=planned_settings(config),
      mesh=dict(zip(sharding.MESH_AXES, mesh_shape)),
      memory=Memory(param_bytes, optimizer_bytes, gradient_bytes, 0),
      generation=generation_memory(model, num_samples), tokens_per_step=tokens,
      model_flops_per_step=params_lib.flops_per_token(model) * tokens,
      step_seconds=None, step_time_source="")
  figures = None
  if method != ANALYTIC:
    compiled_config = config
    if model.attention == "cudnn" and target.name != "local":
      compiled_config = _with(config, attention="xla")  # cuDNN compiles only beside a real GPU
      result.notes.append(
          "attention compiled as XLA's einsum: cuDNN's fused kernel, which training uses here, "
          "compiles only with a GPU present and keeps no T x T scores, so memory is an upper bound")
    try:
      figures = compiled_figures(compiled_config, targets.devices(target), fast)
    except targets.CompileOnlyUnavailable as e:
      if method == "compile":
        raise
      result.notes.append(f"analytic model: {e}")
    if figures is not None and figures.refused:
      result.memory_is_lower_bound = True
      result.notes.append(f"XLA refused to compile the step for {target.chip.name}, so its memory "
                          f"is a lower bound: {figures.refused}")
  if figures is None:
    _fill_analytic(result, config, model, mesh_shape)
  else:
    _fill_compiled(result, config, model, mesh_shape, figures, fast)
  return result


def _fill_compiled(result, config, model, mesh_shape, figures: _Compiled, fast: bool) -> None:
  result.method = COMPILED if result.target.name == "local" else DEVICELESS
  memory = result.memory
  memory.gradients = min(memory.gradients, figures.temp)  # TPUs update part of them in place
  memory.activations = figures.temp - memory.gradients
  memory.code = figures.code
  memory.other = max(0, figures.arguments - memory.params - memory.optimizer) + (
      figures.outputs_not_aliased)
  result.compile_seconds = figures.seconds
  if fast and config.n_layer > EXTRAPOLATION_LAYERS[-1]:
    result.extrapolated_from_layers = EXTRAPOLATION_LAYERS
    if result.target.platform == "tpu":
      result.notes.append("extrapolated per layer: on TPUs XLA's memory is not linear in depth "
                          "at 1-3 layers, and this was off by -50% to +66% (docs/performance.md); "
                          "drop --fast for the exact figure")
  target = result.target
  flops, bytes_accessed = figures.flops, figures.bytes_accessed
  optimal_seconds = figures.optimal_seconds
  accumulate = config.grad_accum_steps
  if accumulate > 1 and target.platform == "tpu":
    # XLA's TPU cost analysis counts a while loop's body once, and the micro-batches are one: it
    # runs grad_accum_steps times. The optimizer's pass over its state runs once, after it.
    update = (roofline.optimizer_bytes(model, mesh_shape) / target.chip.memory_bandwidth
              if target.chip.memory_bandwidth else 0.0)
    flops = flops and flops * accumulate
    bytes_accessed = bytes_accessed and bytes_accessed * accumulate
    if optimal_seconds is not None:
      optimal_seconds = accumulate * max(0.0, optimal_seconds - update) + update
  model_flops = roofline.step_flops(config, model) / target.num_devices
  flops = max(flops or 0.0, model_flops)  # MFU is reckoned from the model's FLOPs: never above 100%
  result.roofline_seconds = roofline.step_roofline(
      target, model, flops, None if target.platform == "cpu" else bytes_accessed, config,
      mesh_shape)
  # No step is faster than its FLOPs at the chip's peak: a cost-model time below that is not one.
  compute_floor = flops / target.peak_flops_for(model.dtype) if target.chip.peak_flops else 0.0
  if optimal_seconds is not None and optimal_seconds >= compute_floor > 0:
    result.step_seconds, result.step_time_source = optimal_seconds, "XLA's TPU cost model"
  elif figures.kernel_seconds:
    result.step_seconds = figures.kernel_seconds
    result.step_time_source = ("roofline per kernel of the compiled program: max(FLOPs / peak, "
                               "bytes / bandwidth) + a launch each")
  elif result.roofline_seconds and target.platform == "cpu":
    result.step_seconds = result.roofline_seconds
    result.step_time_source = (f"roofline: the step's FLOPs at this CPU's measured matmul rate "
                               f"({roofline.cpu_matmul_flops(model.dtype) / 1e9:.0f} GFLOP/s); "
                               f"--measure runs it")
  elif result.roofline_seconds:
    result.step_seconds = result.roofline_seconds
    result.step_time_source = ("roofline: max(FLOPs / peak, bytes / bandwidth) of the compiled "
                               "step, plus communication")
    if optimal_seconds is not None:
      result.notes.append(f"XLA's TPU cost model gave {optimal_seconds:.3g} s, less than "
                          f"the step's FLOPs take at the chip's peak: the roofline is reported")
  else:
    result.step_time_source = "unknown: no peak FLOP/s for this device (measure with --measure)"


def _fill_analytic(result, config, model, mesh_shape) -> None:
  data, fsdp, tensor = mesh_shape
  tokens = config.batch_size // (data * fsdp) * config.block_size
  terms = params_lib.activation_terms(model, tokens, tensor, fsdp)
  calibration = memory_model()
  key = params_lib.memory_model_key(result.target.platform, model)
  coefficients = calibration[key]
  memory = result.memory
  temporaries = params_lib.model_temporary_bytes(terms, memory.gradients, model.n_layer,
                                                 model.remat, coefficients)
  memory.gradients = int(min(memory.gradients, temporaries))
  memory.activations = int(temporaries - memory.gradients)
  code = calibration["code"].get(result.target.platform, [0, 0])
  memory.code = int(code[0] + code[1] * model.n_layer)
  memory.other = config.grad_accum_steps * config.batch_size // (data * fsdp) * (
      config.block_size + 1) * 4
  result.roofline_seconds = roofline.step_roofline(
      result.target, model, roofline.step_flops(config, model) / result.target.num_devices, None,
      config, mesh_shape)
  result.step_seconds = result.roofline_seconds
  result.step_time_source = "roofline of the analytic FLOPs and bytes, plus communication"
  result.notes.append(f"memory from the analytic model ({key}: within "
                      f"{100 * coefficients['max_relative_error']:.0f}% of XLA on its "
                      f"{coefficients['probes']} calibration compiles)")


def out_of_memory_line(error: Exception) -> str | None:
  """XLA's own words when compiling failed for lack of device memory, else None."""
  text = str(error)
  if "RESOURCE_EXHAUSTED" not in text and "Ran out of memory" not in text:
    return None
  return next((line.strip() for line in text.splitlines() if "memory" in line.lower()), text[:300])


def memory_model() -> dict[str, Any]:
  """The analytic model's calibration (gptjax/memory_model.json, by tools/calibrate_memory.py)."""
  import json
  import os
  with open(os.path.join(os.path.dirname(__file__), "memory_model.json")) as f:
    return json.load(f)


def generation_memory(model: ModelConfig, batch: int) -> Generation:
  """Sampling `batch` sequences on one device: float32 params, the KV cache at block_size, and
  the prompt's pass at full context (its logits, and one layer's scores and MLP activations)."""
  s, T, C = params_lib.dtype_bytes(model.dtype), model.block_size, model.n_embd
  return Generation(
      batch=batch, params=4 * params_lib.count_params(model).total,
      kv_cache=2 * model.n_layer * batch * T * C * s,
      working=batch * T * (model.vocab_size * (4 + s) + model.n_head * T * (4 + s) + 8 * C * s))


def measure(config: ml_collections.ConfigDict, result: Estimate, steps: int = 10) -> None:
  """Runs the step on this machine's devices (allocating it) and records the measured step time
  and peak memory in `result`, beside the planned figures."""
  import resource
  from gptjax import benchmark
  figures = benchmark.bench_train_step(config, steps=steps, warmup=2)
  result.step_seconds = figures["step_ms"] / 1000
  result.step_time_source = f"measured: median of {steps} steps on this machine"
  peak = figures["peak_bytes_in_use"]
  if peak is None:  # CPU: the whole process's peak resident memory (Python and JAX included)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result.notes.append("measured peak: the process's peak resident memory (ru_maxrss), which "
                        "includes Python, JAX and the compiler, not only the step's buffers")
  result.measured_peak_bytes = peak
