"""XLA's own figures for the train step compiled for a target's devices, with or without them.

`compile_step` lowers and compiles exactly the step `python -m gptjax.train` would run (the same
`build()`, shardings and batch) without allocating anything, and `figures_of` reads XLA's
accounts: `memory_analysis()` per device; on TPUs `cost_analysis()` (time, FLOPs, bytes) as the
calibration, corrected by the walk of the optimised program (kernels.py): while loops times their
trip counts, Pallas kernels added; on GPUs (no cost analysis there) the per-kernel roofline.
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
from gptjax.planner import calls, kernels, roofline, targets
from gptjax.planner.options import StepOptions

# --fast compiles these depths and extrapolates per layer, exact on GPUs and CPUs; TPUs are not
# extrapolated (fast_is_exact: docs/performance.md has the figures).
EXTRAPOLATION_LAYERS = (1, 2)
# Custom calls libtpu 0.0.42's cost model prices at -1 s and -1 FLOP each (seen: ConcatBitcast in
# the backward pass; X64Combine beside every rng-bit-generator of rbg dropout).
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
  flops: float | None  # every kernel's, while loops times their trips
  bytes_accessed: float | None
  optimal_seconds: float | None  # TPUs: XLA's cost model, loops and Pallas kernels counted
  kernel_seconds: float | None  # GPUs: the per-kernel roofline (roofline.kernel_roofline)
  seconds: float
  refused: str | None = None  # XLA's words when it refused the program (too big): temp is
  # then the lower bound it gave
  notes: list[str] = dataclasses.field(default_factory=list)

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
                    refused=self.refused or other.refused,
                    notes=list(dict.fromkeys(self.notes + other.notes)))


def fused_attention(config: ml_collections.ConfigDict, mesh_shape,
                    options: StepOptions) -> calls.FusedAttention:
  """cuDNN's attention kernels of `config`'s step on one device (calls.FusedAttention)."""
  data, fsdp, tensor = mesh_shape
  passes = config.n_layer * config.grad_accum_steps
  return calls.FusedAttention(batch=config.batch_size // (data * fsdp),
                              heads=config.n_head // tensor,
                              length=config.block_size,
                              head_dim=config.n_embd // config.n_head,
                              itemsize=4 if config.dtype == "float32" else 2,
                              forward_passes=passes * (1 + options.recomputes_attention_forward()),
                              backward_passes=passes)


def compile_step(config: ml_collections.ConfigDict,
                 devices,
                 substitute: StepOptions | None = None) -> Compiled:
  """The step compiled for `devices`; with `substitute` (the options of the step that would run),
  XLA's attention is priced as cuDNN's fused kernels (roofline.kernel_roofline)."""
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
  fused = None
  if substitute is not None:
    fused = fused_attention(config, tuple(mesh.shape[a] for a in sharding.MESH_AXES), substitute)
  return figures_of(compiled, devices[0], time.perf_counter() - start, fused)


def _refused_temporaries(error: Exception) -> int | None:
  """The temporaries XLA says a program needs when it refuses to compile it for lack of memory:
  libtpu's 'the total memory required for HLO temporaries (17.04G) exceeds available HBM'."""
  match = re.search(r"HLO temporaries \(([\d.]+)([KMGT])\)", str(error))
  if match is None:
    return None
  return int(float(match.group(1)) * 1024**("KMGT".index(match.group(2)) + 1))


def figures_of(compiled,
               device=None,
               seconds: float = 0.0,
               fused: calls.FusedAttention | None = None) -> Compiled:
  """Per-device memory, FLOPs, bytes and time of a compiled step: XLA's memory analysis; on TPUs
  its cost analysis corrected by the walk of the program; on GPUs the per-kernel roofline. Without
  `device`, memory and XLA's cost analysis as they are."""
  memory = compiled.memory_analysis()
  cost = _cost(compiled)
  result = Compiled(arguments=memory.argument_size_in_bytes,
                    outputs_not_aliased=max(
                        0, memory.output_size_in_bytes - memory.alias_size_in_bytes),
                    temp=memory.temp_size_in_bytes,
                    code=memory.generated_code_size_in_bytes,
                    flops=cost.get("flops"),
                    bytes_accessed=cost.get("bytes accessed"),
                    optimal_seconds=cost.get("optimal_seconds"),
                    kernel_seconds=None,
                    seconds=seconds)
  chip = devices_lib.known_chip(device.device_kind) if device is not None else None
  if device is None or (result.optimal_seconds is None and
                        (chip is None or chip.platform != "gpu")):
    return result  # the trainer's memory check: no pricing
  text = compiled.as_text()
  if result.optimal_seconds is not None:
    # libtpu prices each custom call it cannot cost at -1 s and -1 FLOP; with them counted as
    # free the figures are XLA's estimate for everything else (docs/performance.md).
    unpriced = sum(
        name in UNPRICED_TPU_CALLS for name in re.findall(r'custom_call_target="([^"]+)"', text))
    result.optimal_seconds += unpriced
    result.flops = result.flops and result.flops + unpriced
  if chip is not None and chip.platform == "gpu":
    priced = roofline.kernel_roofline(text, chip, fused)
    result.flops, result.bytes_accessed, result.kernel_seconds = (priced.flops, priced.bytes,
                                                                  priced.seconds)
    if fused is not None:
      result.notes.append("attention priced as cuDNN's fused kernels (from their shapes) in place "
                          "of XLA's, which was compiled: cuDNN compiles only beside a GPU")
  elif chip is not None and chip.platform == "tpu":
    correct_tpu_figures(result, text, chip)
  return result


def correct_tpu_figures(result: Compiled, hlo_text: str, chip) -> None:
  """XLA's TPU cost analysis counts a while loop's body once and a Pallas kernel that declares no
  cost as nothing. Keeping its figures as the calibration, each is scaled by the walk's ratio of
  the program with every loop run its trip count to the program as XLA counts it, and the unseen
  kernels' FLOPs, bytes and roofline time are added."""
  walked = kernels.walk(hlo_text, roofline.device_of(chip))
  seen = walked.total - walked.unseen
  ratio = lambda a, b: a / b if b else 1.0  # noqa: E731
  if result.flops is not None:
    result.flops = result.flops * ratio(seen.flops, walked.once.flops) + walked.unseen.flops
  if result.bytes_accessed is not None:
    result.bytes_accessed = (result.bytes_accessed * ratio(seen.bytes, walked.once.bytes) +
                             walked.unseen.bytes)
  if result.optimal_seconds is not None and result.optimal_seconds >= 0:
    result.optimal_seconds = (result.optimal_seconds * ratio(seen.seconds, walked.once.seconds) +
                              walked.unseen.seconds)
  unread = [loop.name for loop in walked.loops if loop.trips is None]
  if unread:
    result.notes.append(f"{len(unread)} while loop(s) of the compiled step have a trip count the "
                        f"planner cannot read ({', '.join(unread[:3])}): counted once")
  if walked.unseen.kernels:
    result.notes.append(
        f"{walked.unseen.kernels:.0f} Pallas kernel call(s) that XLA's cost model cannot see, "
        f"priced from their shapes: {walked.unseen.flops / 1e9:.4g} GFLOP, "
        f"{1000 * walked.unseen.seconds:.4g} ms at the chip's peak")


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


def compiled_figures(config: ml_collections.ConfigDict,
                     devices,
                     fast: bool,
                     options: StepOptions | None = None,
                     substitute: bool = False) -> Compiled:
  """One compile of the real step, or with `fast` two shallow ones extrapolated per layer.

  `substitute`: price cuDNN's fused attention in place of the XLA attention compiled (options:
  the step that would run). On TPUs a step with its layers under a scan is compiled a second time
  unrolled for its time and FLOPs: XLA's TPU cost model prices a scanned loop body inconsistently
  (docs/planner.md); its memory is the scanned step's.
  """
  fused = options if substitute else None
  if not fast or config.n_layer <= EXTRAPOLATION_LAYERS[-1]:
    figures = compile_step(config, devices, fused)
    if options is not None and options.scan_layers and devices[0].platform == "tpu":
      unrolled = compile_step(with_fields(config, scan_layers=False), devices, fused)
      figures = dataclasses.replace(figures,
                                    flops=unrolled.flops,
                                    bytes_accessed=unrolled.bytes_accessed,
                                    optimal_seconds=unrolled.optimal_seconds,
                                    seconds=figures.seconds + unrolled.seconds,
                                    notes=figures.notes + [
                                        f"time and FLOPs from the same step with its layers "
                                        f"unrolled (a second compile, {unrolled.seconds:.0f} s): "
                                        f"XLA's TPU cost model misprices a scanned layer's loop "
                                        f"body; memory is the scanned step's"
                                    ])
    return figures
  shallow = [
      compile_step(with_fields(config, n_layer=depth), devices, fused)
      for depth in EXTRAPOLATION_LAYERS
  ]
  if shallow[0].refused:  # one layer is already too big: all of them are
    return dataclasses.replace(shallow[0], arguments=shallow[1].arguments)
  return shallow[0].extrapolate(shallow[1], config.n_layer - EXTRAPOLATION_LAYERS[1])


def with_fields(config: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(config.to_dict())
  config.update(fields)
  return config
