"""Step time where no cost model gives one: rooflines of the compiled program, or of the model.

  kernel_roofline(hlo_text, chip)  sum over the compiled program's kernels of
                                   max(FLOPs / peak, bytes / bandwidth) + a launch each (GPUs)
  step_roofline(...)               max(FLOPs / peak, bytes / bandwidth) of the whole step, plus
                                   communication at the chip's link bandwidth (analytic)

A roofline is a lower bound on time: it assumes every kernel runs at the better of its two limits.
Summed per kernel, it charges the memory-bound kernels (layer norms, softmax, optimizer) that a
whole-step roofline hides behind the matmuls.
"""

from __future__ import annotations

import functools
import math
import re
import time

import jax
import jax.numpy as jnp
import ml_collections

from gptjax import params as params_lib
from gptjax.config import ModelConfig
from gptjax.planner import memory_model

KERNEL_LAUNCH_SECONDS = 2e-6  # per kernel on a GPU (CUDA launch and scheduling)
_DTYPE_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "bf16": 2,
    "f16": 2,
    "s16": 2,
    "u16": 2,
    "f32": 4,
    "s32": 4,
    "u32": 4,
    "f64": 8,
    "s64": 8,
    "u64": 8
}
_SHAPE = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (.+?) ([a-z][a-z0-9-]*)\((.*)$")
_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_FREE = ("parameter", "get-tuple-element", "tuple", "bitcast", "constant", "after-all",
         "partition-id", "replica-id")


def _shape_bytes(shape: str) -> int:
  return sum(
      _DTYPE_BYTES.get(dtype, 4) *
      math.prod(int(d) for d in dims.split(",") if d) for dtype, dims in _SHAPE.findall(shape))


def _computations(hlo_text: str) -> dict[str, list[tuple[str, str, str, str]]]:
  """name -> [(instruction, shape, opcode, rest of line)] for every computation of an HLO module."""
  result, current = {}, None
  for line in hlo_text.splitlines():
    header = re.match(r"^(?:ENTRY )?%(\S+) \(", line)
    if header and line.rstrip().endswith("{"):
      current = result.setdefault("ENTRY" if line.startswith("ENTRY") else header.group(1), [])
    elif line.startswith("}"):
      current = None
    elif current is not None and (match := _INSTRUCTION.match(line)):
      current.append(match.groups())
  return result


def _dot_flops(computation, shapes) -> tuple[float, bool]:
  """FLOPs of the dots in a (fused) computation, and whether any multiplies float32 operands."""
  flops, fp32 = 0.0, False
  for name, shape, opcode, rest in computation:
    if opcode != "dot":
      continue
    operands = re.findall(r"%([\w.-]+)", rest.split(")", 1)[0])
    lhs = [int(d) for d in _SHAPE.search(shapes[operands[0]]).group(2).split(",") if d]
    contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
    k = math.prod(lhs[int(i)] for i in contracting.group(1).split(",") if i) if contracting else 1
    out = [int(d) for d in _SHAPE.search(shape).group(2).split(",") if d]
    flops += 2.0 * math.prod(out) * k
    fp32 |= shapes[operands[0]].startswith("f32")
  return flops, fp32


def kernel_roofline(hlo_text: str,
                    peak_flops: float,
                    peak_flops_fp32: float,
                    bandwidth: float,
                    link_bandwidth: float,
                    launch_seconds: float = KERNEL_LAUNCH_SECONDS) -> dict:
  """Seconds of a compiled (optimised, per-device) HLO module: per kernel max(FLOPs / peak, bytes
  / bandwidth) plus a launch, collectives at the link bandwidth, while loops times their trip
  count. Returns seconds, flops, bytes and kernels."""
  computations = _computations(hlo_text)
  shapes = {name: shape for body in computations.values() for name, shape, _, _ in body}

  @functools.lru_cache(maxsize=None)
  def cost(name: str) -> tuple[float, float, float, int]:
    seconds = flops_total = bytes_total = kernels = 0.0
    for instruction, shape, opcode, rest in computations.get(name, []):
      if opcode in _FREE:
        continue
      if opcode == "while":
        body = re.search(r"body=%([\w.-]+)", rest).group(1)
        trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', rest)
        sub = cost(body)
        n = int(trips.group(1)) if trips else 1
        seconds, flops_total, bytes_total = (seconds + n * sub[0], flops_total + n * sub[1],
                                             bytes_total + n * sub[2])
        kernels += n * sub[3]
        continue
      operands = re.findall(r"%([\w.-]+)", rest.split("), ", 1)[0])
      moved = _shape_bytes(shape) + sum(_shape_bytes(shapes.get(o, "")) for o in operands)
      called = re.search(r"calls=%([\w.-]+)", rest)
      flops, fp32 = _dot_flops(
          computations.get(called.group(1), []) if called else [(instruction, shape, opcode, rest)],
          shapes)
      if opcode.startswith(_COLLECTIVES) and link_bandwidth:
        time_s = _shape_bytes(shape) / link_bandwidth
      else:
        time_s = max(flops / (peak_flops_fp32 if fp32 else peak_flops), moved / bandwidth)
      seconds += time_s + launch_seconds
      flops_total, bytes_total, kernels = flops_total + flops, bytes_total + moved, kernels + 1
    return seconds, flops_total, bytes_total, int(kernels)

  seconds, flops, moved, kernels = cost("ENTRY")
  return dict(seconds=seconds, flops=flops, bytes=moved, kernels=kernels)


def step_flops(config: ml_collections.ConfigDict, model: ModelConfig) -> float:
  """FLOPs of one step as run: the model's 6N + 12LTC per token, what the remat policy recomputes
  (recomputed_flops_per_token) and, with loss_chunk_tokens, the head's recomputed forward (2VC a
  token)."""
  tokens = config.batch_size * config.grad_accum_steps * config.block_size
  flops = params_lib.flops_per_token(model) * tokens
  flops += model.n_layer * recomputed_flops_per_token(model) * tokens
  if model.loss_chunk_tokens:
    flops += 2 * model.vocab_size * model.n_embd * tokens
  return flops


def recomputed_flops_per_token(model: ModelConfig) -> float:
  """One block's forward FLOPs a token that the remat policy recomputes in the backward pass:
  "full" the whole block (2 x 12C^2 + 4TC); "save_attn_out" its weight matmuls; "dots_no_batch"
  the attention (XLA's einsum, or the fused kernel's forward); with the attention output kept too,
  XLA's scores (2TC) and nothing with a fused kernel; "dots" a fused kernel's forward."""
  C, T, xla = model.n_embd, model.block_size, model.attention == "xla"
  return {
      "none": 0,
      "full": 24 * C * C + 4 * T * C,
      "save_attn_out": 24 * C * C,
      "dots_no_batch": 4 * T * C,
      "dots_no_batch+attn_out": 2 * T * C if xla else 0,
      "dots": 0 if xla else 4 * T * C,
  }[model.remat]


def step_roofline(target, model: ModelConfig, flops: float, bytes_accessed: float | None,
                  config: ml_collections.ConfigDict, mesh_shape) -> float | None:
  """max(compute, memory traffic) + communication, in seconds; None without a peak FLOP/s.

  `flops` and `bytes_accessed` are one device's; with no byte count, the traffic is the weights
  read per micro-batch (forward and backward), every activation term written once and read three
  times (forward, backward, and the elementwise kernels between; on an H100 this matched the
  per-kernel roofline of compiled steps to within ~20%), and the optimizer's pass over its state.
  """
  chip = target.chip
  peak = target.peak_flops_for(model.dtype)
  if not peak and target.platform == "cpu":
    peak = cpu_matmul_flops(model.dtype) / jax.local_device_count()
  if not peak:
    return None
  data, fsdp, tensor = mesh_shape
  if bytes_accessed is None:
    total_params = params_lib.count_params(model).total
    s = memory_model.dtype_bytes(model.dtype)
    tokens = config.batch_size // (data * fsdp) * config.block_size
    activations = memory_model.activation_terms(model, tokens, tensor, fsdp)
    bytes_accessed = config.grad_accum_steps * (3 * total_params / tensor * s + 4 *
                                                (activations["logits"] + model.n_layer *
                                                 (activations["channels"] + activations["scores"])))
    bytes_accessed += optimizer_bytes(model, mesh_shape)
  memory = bytes_accessed / chip.memory_bandwidth if chip.memory_bandwidth else 0.0
  # GPUs launch each kernel: about 60 per layer and 60 more per micro-batch in compiled steps.
  launches = (60 * model.n_layer +
              60) * config.grad_accum_steps * KERNEL_LAUNCH_SECONDS * (target.platform == "gpu")
  return (max(flops / peak, memory) + launches +
          communication_seconds(target, model, config, mesh_shape))


def optimizer_bytes(model: ModelConfig, mesh_shape) -> float:
  """Bytes one device moves in the optimizer's pass over its state: AdamW reads parameters,
  gradients and both moments and writes parameters and moments, 7 float32 values a parameter."""
  _, fsdp, tensor = mesh_shape
  return 7 * 4 * params_lib.count_params(model).total / (fsdp * tensor)


def communication_seconds(target, model: ModelConfig, config: ml_collections.ConfigDict,
                          mesh_shape) -> float:
  """Ring collectives at the chip's link bandwidth, none of them hidden behind compute: FSDP's
  all-gathers (forward and backward, per micro-batch) and gradient reduce-scatter, the data-parallel
  all-reduce, and tensor parallelism's two all-reduces per layer and pass."""
  data, fsdp, tensor = mesh_shape
  link = target.chip.link_bandwidth
  if target.num_devices == 1 or not link:
    return 0.0
  weights = params_lib.count_params(model).total / tensor
  s = memory_model.dtype_bytes(model.dtype)
  sent = 0.0
  if fsdp > 1:
    sent += (config.grad_accum_steps * 2 * weights * s + weights * 4) * (fsdp - 1) / fsdp
  if data > 1:
    sent += 2 * weights / fsdp * 4 * (data - 1) / data
  if tensor > 1:
    tokens = config.batch_size // (data * fsdp) * config.block_size * config.grad_accum_steps
    sent += 4 * model.n_layer * 2 * tokens * model.n_embd * s * (tensor - 1) / tensor
  return sent / link


@functools.lru_cache(maxsize=None)
def cpu_matmul_flops(dtype: str) -> float:
  """FLOP/s of a 1024 x 1024 matmul on this CPU in `dtype` (XLA's CPU peak, measured once)."""
  a = jax.device_put(jnp.ones((1024, 1024), jnp.dtype(dtype)), jax.local_devices(backend="cpu")[0])
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  times = []
  for _ in range(5):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * 1024**3 / sorted(times)[2]
