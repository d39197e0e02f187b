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
from gptjax.planner.options import REMAT_AUTO, decide_remat, remat_name, step_options

COMPILED, DEVICELESS, ANALYTIC = "compiled", "compiled-deviceless", "analytic"


@dataclasses.dataclass
class Memory:
  """Bytes per device of one train step."""
  params: int  # float32 parameters, as sharded
  optimizer: int  # AdamW's two moments (Muon's matrices: one), and step counts
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
  step_seconds: float | None  # the planner's estimate (GPUs: the expected time)
  step_time_source: str
  step_time_is_lower_bound: bool = False  # a roofline stands in for the step's time
  roofline_seconds: float | None = None  # a lower bound on the step's time
  roofline_source: str = ""
  gpu_efficiency: float | None = None  # GPUs: step_seconds = roofline_seconds / gpu_efficiency
  flops_per_step: float | None = None  # per device, as the step runs them (recompute, kernels)
  compile_seconds: float = 0.0
  extrapolated_from_layers: tuple[int, ...] | None = None
  measured_peak_bytes: int | None = None  # --measure: the allocator's (or on CPU the process's)
  planned_step_seconds: float | None = None  # --measure: the plan's step_seconds before measuring
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
    return self._mfu(self.step_seconds)

  @property
  def mfu_roofline(self) -> float | None:
    """MFU at the roofline: an upper bound."""
    return self._mfu(self.roofline_seconds)

  def _mfu(self, seconds: float | None) -> float | None:
    peak = self.target.chip.peak_flops * self.target.num_devices
    if not seconds or not peak:
      return None
    return self.model_flops_per_step / (seconds * peak)

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
                step_time_is_lower_bound=self.step_time_is_lower_bound,
                roofline_seconds=self.roofline_seconds,
                roofline_source=self.roofline_source,
                gpu_efficiency=self.gpu_efficiency,
                mfu_roofline=self.mfu_roofline,
                flops_per_step_per_device=self.flops_per_step,
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
                planned_step_seconds=self.planned_step_seconds,
                extrapolated_from_layers=self.extrapolated_from_layers,
                notes=self.notes)


def planned_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The fields the search varies, as `--config.<field>` values."""
  return dict(batch_size=config.batch_size,
              grad_accum_steps=config.grad_accum_steps,
              dtype=config.dtype,
              remat=config.remat,
              loss_chunk_tokens=config.get("loss_chunk_tokens", 0),
              mesh=dict(data=config.mesh.data, fsdp=config.mesh.fsdp, tensor=config.mesh.tensor))


def state_bytes(config: ml_collections.ConfigDict, mesh) -> tuple[int, int]:
  """(params, optimizer state) bytes per device, from the shardings training gives them.

  `mesh` may be a jax.sharding.AbstractMesh: no device is needed.
  """
  architecture = ModelConfig(**ModelConfig.from_config(config).architecture())
  return _state_bytes(architecture, tuple(mesh.axis_sizes), config.grad_clip > 0, config.optimizer)


@functools.lru_cache(maxsize=256)
def _state_bytes(architecture: ModelConfig,
                 mesh_shape: tuple[int, ...],
                 clip: bool,
                 optimizer: str = "adamw"):
  mesh = jax.sharding.AbstractMesh(mesh_shape, sharding.MESH_AXES)
  boxed = params_lib.abstract_params(architecture)
  param_shardings = sharding.logical_shardings(boxed, mesh)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.meta.unbox(boxed), param_shardings)
  optimizer_config = config_lib.get_base_config()
  optimizer_config.grad_clip = 1.0 if clip else 0.0
  optimizer_config.optimizer = optimizer  # Muon keeps one moment of its matrices, AdamW two
  tx = make_optimizer(optimizer_config, nn.get_partition_spec(boxed))
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
  if remat_name(config.remat) == REMAT_AUTO:  # decided as training decides it, for `target`

    def attempt(decided):
      result = estimate(decided, target, method=method, fast=fast, num_samples=num_samples)
      return result, result.memory.total

    said = []
    _, result = decide_remat(config, target.device_memory_bytes, attempt, said.append)
    result.notes[:0] = said
    return result
  mesh_shape = sharding.mesh_shape(config, target.num_devices)
  sharding.validate_for_mesh(config, mesh_shape)
  param_bytes, optimizer_bytes = state_bytes(
      config, jax.sharding.AbstractMesh(mesh_shape, sharding.MESH_AXES))
  gradient_bytes = param_bytes * (2 if config.grad_accum_steps > 1 else 1)
  model = ModelConfig.from_config(config).for_platform(target.platform)
  options = step_options(config, target.platform)
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
    compiled_config, substitute = config, False
    if options.attention == "cudnn" and target.name != "local":
      # cuDNN compiles only beside a real GPU: XLA's attention is compiled, and priced as cuDNN's.
      compiled_config, substitute = with_fields(config, attention="xla"), True
      result.notes.append(
          "attention compiled as XLA's einsum: cuDNN's fused kernel, which training uses here, "
          "compiles only with a GPU present and keeps no T x T scores, so memory is an upper bound")
    try:
      figures = compiled_figures(compiled_config, targets.devices(target), fast, options,
                                 substitute)
    except targets.CompileOnlyUnavailable as e:
      if method == "compile":
        raise
      result.notes.append(f"analytic model: {e}")
    if figures is not None and figures.refused:
      result.memory_is_lower_bound = True
      result.notes.append(f"XLA refused to compile the step for {target.chip.name}, so its memory "
                          f"is a lower bound: {figures.refused}")
  if figures is None:
    _fill_analytic(result, config, model, options, mesh_shape)
  else:
    _fill_compiled(result, config, model, options, mesh_shape, figures, fast)
  return result


def _fill_compiled(result, config, model, options, mesh_shape, figures: Compiled,
                   fast: bool) -> None:
  result.method = COMPILED if result.target.name == "local" else DEVICELESS
  memory = result.memory
  memory.gradients = min(memory.gradients, figures.temp)  # TPUs update part of them in place
  memory.activations = figures.temp - memory.gradients
  memory.code = figures.code
  memory.other = max(
      0, figures.arguments - memory.params - memory.optimizer) + (figures.outputs_not_aliased)
  result.compile_seconds = figures.seconds
  result.notes += figures.notes
  if fast and config.n_layer > EXTRAPOLATION_LAYERS[-1]:
    result.extrapolated_from_layers = EXTRAPOLATION_LAYERS
    if result.target.platform == "tpu":
      result.notes.append("extrapolated per layer: on TPUs XLA's memory is not linear in depth "
                          "at 1-3 layers, and this was off by -50% to +66% (docs/performance.md); "
                          "drop --fast for the exact figure")
  target = result.target
  flops = figures.flops or roofline.step_flops(config, model, options) / target.num_devices
  result.flops_per_step = flops
  whole_step = roofline.step_roofline(target, model, options, flops,
                                      None if target.platform == "cpu" else figures.bytes_accessed,
                                      config, mesh_shape)
  prefix = "compile-only: " if result.method == DEVICELESS else ""
  # No step is faster than its FLOPs at the chip's peak: a cost-model time below that is not one.
  compute_floor = flops / target.peak_flops_for(model.dtype) if target.chip.peak_flops else 0.0
  optimal_seconds = figures.optimal_seconds
  if figures.kernel_seconds:
    _gpu_times(
        result, figures.kernel_seconds, prefix + "per-kernel roofline of the compiled "
        "program: max(FLOPs / peak, bytes / bandwidth) + a launch each")
  elif optimal_seconds is not None and optimal_seconds >= compute_floor > 0:
    result.step_seconds = optimal_seconds
    result.step_time_source = (prefix + "XLA's TPU cost model, while loops times their trips, "
                               "Pallas kernels priced from their shapes")
    result.roofline_seconds = whole_step
    result.roofline_source = "max(FLOPs / peak, bytes / bandwidth) of the whole step"
  elif whole_step and target.platform == "cpu":
    _lower_bound(result, whole_step,
                 (f"roofline: the step's FLOPs at this CPU's measured matmul rate "
                  f"({roofline.cpu_matmul_flops(model.dtype) / 1e9:.0f} GFLOP/s); "
                  f"--measure runs it"))
  elif whole_step:
    _lower_bound(
        result, whole_step, prefix + "roofline: max(FLOPs / peak, bytes / bandwidth) "
        "of the compiled step, plus communication")
    if optimal_seconds is not None:
      result.notes.append(f"XLA's TPU cost model gave {optimal_seconds:.3g} s, less than "
                          f"the step's FLOPs take at the chip's peak: the roofline is reported")
  else:
    result.step_time_source = "unknown: no peak FLOP/s for this device (measure with --measure)"


def _gpu_times(result: Estimate, roofline_seconds: float, source: str) -> None:
  """A GPU's two figures: the roofline (a lower bound) and the expected time, the roofline over
  the efficiency published runs of the same model reach (docs/performance.md)."""
  efficiency = roofline.gpu_efficiency()
  result.roofline_seconds, result.roofline_source = roofline_seconds, source
  result.gpu_efficiency = efficiency
  result.step_seconds = roofline_seconds / efficiency
  result.step_time_source = (f"{source}; expected = roofline / {efficiency:.3g}, the share of it "
                             f"published GPT-2 runs reach on A100 and H100 GPUs")


def _lower_bound(result: Estimate, seconds: float, source: str) -> None:
  result.step_seconds = result.roofline_seconds = seconds
  result.step_time_source = result.roofline_source = source
  result.step_time_is_lower_bound = True


def _fill_analytic(result, config, model, options, mesh_shape) -> None:
  data, fsdp, tensor = mesh_shape
  tokens = config.batch_size // (data * fsdp) * config.block_size
  terms = memory_model.activation_terms(model, options, tokens, tensor, fsdp)
  calibration = memory_model.calibration()
  key = memory_model.memory_model_key(result.target.platform, model, options)
  coefficients = calibration[key]
  memory = result.memory
  temporaries = memory_model.model_temporary_bytes(terms, memory.gradients, model.n_layer,
                                                   options.remat_on, coefficients,
                                                   options.scan_layers)
  memory.gradients = int(min(memory.gradients, temporaries))
  memory.activations = int(temporaries - memory.gradients)
  code = calibration["code"].get(result.target.platform, [0, 0])
  memory.code = int(code[0] + code[1] * model.n_layer)
  memory.other = config.grad_accum_steps * config.batch_size // (data * fsdp) * (config.block_size +
                                                                                 1) * 4
  result.flops_per_step = roofline.step_flops(config, model, options) / result.target.num_devices
  seconds = roofline.step_roofline(result.target, model, options, result.flops_per_step, None,
                                   config, mesh_shape)
  source = "roofline of the analytic FLOPs and bytes, plus communication"
  if seconds and result.target.platform == "gpu":
    _gpu_times(result, seconds, source)
  elif seconds:
    _lower_bound(result, seconds, source)
  result.notes.append(f"memory from the analytic model ({key}: within "
                      f"{100 * coefficients['max_relative_error']:.0f}% of XLA on its "
                      f"{coefficients['probes']} calibration compiles)")
  uncalibrated = [
      name for name, on in (("fused attention", options.fused_attention),
                            (f"remat {options.remat}", options.remat not in ("none", "full")),
                            ("a chunked loss",
                             options.loss_chunk_tokens > 0), ("scan_layers", options.scan_layers))
      if on
  ]
  if uncalibrated:
    result.notes.append(f"not yet calibrated against compiles: {', '.join(uncalibrated)} (their "
                        f"terms are counted as the textbook has them: docs/planner.md)")
