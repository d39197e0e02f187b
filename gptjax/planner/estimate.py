"""What a config needs on a target: memory per device and step time, compiled or analytic.

The engine of the fit planner (`python -m gptjax.plan`). Where the target compiles (local devices,
or compile-only TPU and GPU devices when their library is installed) the figures are XLA's for
exactly the step gptjax.train runs (gptjax/planner/compiled.py); elsewhere they come from the
analytic memory model (memory_model.py) and a roofline. Every figure says where it comes from.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from gptjax import config as config_lib
from gptjax import params as params_lib
from gptjax import sharding
from gptjax.config import ModelConfig
from gptjax.optim import make_optimizer
from gptjax.planner import memory_model, roofline, targets
from gptjax.planner.compiled import (EXTRAPOLATION_LAYERS, Compiled, compiled_figures,
                                     per_device_bytes, with_fields)
from gptjax.planner.memory_model import Generation, generation_memory

COMPILED, DEVICELESS, ANALYTIC = "compiled", "compiled-deviceless", "analytic"


@dataclasses.dataclass
class Memory:
  """Bytes per device of one train step."""
  params: int  # float32 parameters, as sharded
  optimizer: int  # AdamW's two moments (and its step count)
  gradients: int  # float32 gradients (and the accumulator with grad_accum_steps > 1)
  activations: int  # activations and every other temporary of the step
  code: int = 0  # the compiled program (TPUs keep it in HBM)
  other: int = 0  # the input batch and any output not written over its input

  @property
  def total(self) -> int:
    return self.params + self.optimizer + self.gradients + self.activations + self.code + self.other


@dataclasses.dataclass
class Estimate:
  """What one config needs on one target, and where each figure comes from."""
  target: targets.Target
  method: str  # COMPILED, DEVICELESS or ANALYTIC
  settings: dict[str, Any]  # the config fields that decide memory and speed
  mesh: dict[str, int]
  memory: Memory
  generation: Generation
  tokens_per_step: int
  model_flops_per_step: float  # 6N + 12LTC per token: what MFU counts
  step_seconds: float | None
  step_time_source: str
  roofline_seconds: float | None = None
  compile_seconds: float = 0.0
  extrapolated_from_layers: tuple[int, ...] | None = None
  measured_peak_bytes: int | None = None  # --measure: the allocator's (or on CPU the process's)
  memory_is_lower_bound: bool = False  # XLA refused the program: it needs at least this
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
    return dict(target=self.target.name,
                method=self.method,
                device_kind=self.target.chip.name,
                devices=self.target.num_devices,
                mesh=self.mesh,
                settings=self.settings,
                memory_bytes_per_device={
                    **memory, "total": self.memory.total
                },
                total_bytes_per_device=self.memory.total,
                device_memory_bytes=self.device_memory_bytes,
                fits=self.fits,
                headroom=self.headroom,
                memory_is_lower_bound=self.memory_is_lower_bound,
                step_seconds=self.step_seconds,
                step_time_source=self.step_time_source,
                roofline_seconds=self.roofline_seconds,
                tokens_per_step=self.tokens_per_step,
                tokens_per_second=self.tokens_per_second,
                seconds_per_1000_iters=None if self.step_seconds is None else 1000 *
                self.step_seconds,
                mfu=self.mfu,
                model_flops_per_step=self.model_flops_per_step,
                generation_bytes={
                    **dataclasses.asdict(self.generation), "total": self.generation.total
                },
                compile_seconds=self.compile_seconds,
                measured_peak_bytes=self.measured_peak_bytes,
                extrapolated_from_layers=self.extrapolated_from_layers,
                notes=self.notes)


def planned_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The fields the search varies, as `--config.<field>` values."""
  return dict(batch_size=config.batch_size,
              grad_accum_steps=config.grad_accum_steps,
              dtype=config.dtype,
              remat=config.remat,
              loss_chunk_tokens=config.loss_chunk_tokens,
              mesh=dict(data=config.mesh.data, fsdp=config.mesh.fsdp, tensor=config.mesh.tensor))


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


def estimate(config: ml_collections.ConfigDict,
             target: targets.Target,
             *,
             method: str = "auto",
             fast: bool = False,
             num_samples: int = 1) -> Estimate:
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
  result = Estimate(target=target,
                    method=ANALYTIC,
                    settings=planned_settings(config),
                    mesh=dict(zip(sharding.MESH_AXES, mesh_shape)),
                    memory=Memory(param_bytes, optimizer_bytes, gradient_bytes, 0),
                    generation=generation_memory(model, num_samples),
                    tokens_per_step=tokens,
                    model_flops_per_step=params_lib.flops_per_token(model) * tokens,
                    step_seconds=None,
                    step_time_source="")
  figures = None
  if method != ANALYTIC:
    compiled_config = config
    if model.attention == "cudnn" and target.name != "local":
      compiled_config = with_fields(config,
                                    attention="xla")  # cuDNN compiles only beside a real GPU
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


def _fill_compiled(result, config, model, mesh_shape, figures: Compiled, fast: bool) -> None:
  result.method = COMPILED if result.target.name == "local" else DEVICELESS
  memory = result.memory
  memory.gradients = min(memory.gradients, figures.temp)  # TPUs update part of them in place
  memory.activations = figures.temp - memory.gradients
  memory.code = figures.code
  memory.other = max(
      0, figures.arguments - memory.params - memory.optimizer) + (figures.outputs_not_aliased)
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
    update = (roofline.optimizer_bytes(model, mesh_shape) /
              target.chip.memory_bandwidth if target.chip.memory_bandwidth else 0.0)
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
  terms = memory_model.activation_terms(model, tokens, tensor, fsdp)
  calibration = memory_model.calibration()
  key = memory_model.memory_model_key(result.target.platform, model)
  coefficients = calibration[key]
  memory = result.memory
  temporaries = memory_model.model_temporary_bytes(terms, memory.gradients, model.n_layer,
                                                   model.remat != "none", coefficients)
  memory.gradients = int(min(memory.gradients, temporaries))
  memory.activations = int(temporaries - memory.gradients)
  code = calibration["code"].get(result.target.platform, [0, 0])
  memory.code = int(code[0] + code[1] * model.n_layer)
  memory.other = config.grad_accum_steps * config.batch_size // (data * fsdp) * (config.block_size +
                                                                                 1) * 4
  result.roofline_seconds = roofline.step_roofline(
      result.target, model,
      roofline.step_flops(config, model) / result.target.num_devices, None, config, mesh_shape)
  result.step_seconds = result.roofline_seconds
  result.step_time_source = "roofline of the analytic FLOPs and bytes, plus communication"
  result.notes.append(f"memory from the analytic model ({key}: within "
                      f"{100 * coefficients['max_relative_error']:.0f}% of XLA on its "
                      f"{coefficients['probes']} calibration compiles)")
