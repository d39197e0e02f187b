"""Step time where no cost model gives one: rooflines of the compiled program, or of the model.

  kernel_roofline(hlo_text, chip)  the compiled program's kernels (kernels.walk): each at
                                   max(FLOPs / peak, bytes / bandwidth) + a launch (GPUs)
  gpu_efficiency()                 the share of that roofline real GPU runs reach (the expected
                                   time is the roofline divided by it: gpu_calibration.json)
  step_roofline(...)               max(FLOPs / peak, bytes / bandwidth) of the whole step, plus
                                   communication at the chip's link bandwidth (analytic)
  step_flops(...)                  the FLOPs a step runs, from the config

A roofline is a lower bound on time: it assumes every kernel runs at the better of its two limits.
Summed per kernel, it charges the memory-bound kernels (layer norms, softmax, optimizer) that a
whole-step roofline hides behind the matmuls.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import time

import jax
import jax.numpy as jnp
import ml_collections

from gptjax import params as params_lib
from gptjax.config import ModelConfig
from gptjax.devices import Chip
from gptjax.planner import calls, kernels, memory_model
from gptjax.planner.options import StepOptions

KERNEL_LAUNCH_SECONDS = 2e-6  # per kernel on a GPU (CUDA launch and scheduling)


def device_of(chip: Chip) -> calls.Device:
  """The roofline's view of a chip (GPUs pay a launch per kernel)."""
  return calls.Device(chip.peak_flops, chip.peak_flops_fp32, chip.memory_bandwidth,
                      chip.link_bandwidth, KERNEL_LAUNCH_SECONDS if chip.platform == "gpu" else 0.0)


def kernel_roofline(hlo_text: str,
                    chip: Chip,
                    fused: calls.FusedAttention | None = None) -> calls.Cost:
  """Seconds, FLOPs and bytes of a compiled (optimised, per-device) program on `chip`: per kernel
  max(FLOPs / peak, bytes / bandwidth) plus a launch, collectives at the link bandwidth, while
  loops times their trip counts; with `fused`, XLA's attention kernels (those that hold the
  scores) replaced by cuDNN's fused kernels priced from their shapes."""
  device = device_of(chip)
  if fused is None:
    return kernels.walk(hlo_text, device).total
  holds_scores = lambda i, m: kernels.holds_array(i, m, fused.is_scores)  # noqa: E731
  walked = kernels.walk(hlo_text, device, {"attention": holds_scores})
  return walked.total - walked.marked["attention"] + fused.cost(device)


@functools.lru_cache(maxsize=None)
def gpu_calibration() -> dict:
  """The published GPU runs the expected time is calibrated on, and the efficiency they give
  (gpu_calibration.json, written by tools/calibrate_gpu.py)."""
  return json.loads(
      (importlib.resources.files("gptjax.planner") / "gpu_calibration.json").read_text())


def gpu_efficiency() -> float:
  """The share of the per-kernel roofline that real runs of the same model reach on GPUs."""
  return gpu_calibration()["efficiency"]


# Matmul FLOPs per token and layer that each remat policy recomputes in the backward pass, in
# (C^2, T x C) (XLA's attention; with a fused kernel, its forward pass instead of the T x C part).
# "full" reruns the block's forward but its last matmul, whose output nothing in the backward
# needs: 16C^2 + 4TC (measured: docs/planner.md). "dots" saves every matmul's output; the
# no-batch policies recompute the attention's batched matmuls (QK^T and PV, or QK^T alone when
# the attention's output is saved); save_attn_out also reruns the block's other matmuls.
REMAT_RECOMPUTE = {
    "none": (0, 0),
    "full": (16, 4),
    "dots": (0, 0),
    "dots_no_batch": (0, 4),
    "save_attn_out": (16, 2),
    "dots_no_batch+attn_out": (0, 2)
}
# Matmuls per computed (query, key) pair of the fused kernels, forward + backward: splash's and
# flash's dq and dkv kernels recompute S and dP each (2 + 7); cuDNN's backward 5 (2 + 5).
FUSED_MATMULS = {"cudnn": 7, "splash": 9, "flash": 9}


def attention_flops_per_token(model: ModelConfig, options: StepOptions) -> float:
  """Attention matmul FLOPs per token, all layers, forward and backward, as the step runs them:
  XLA's einsum over every (query, key) pair (12LTC, the MFU's count), fused kernels over the
  causal tiles they compute, and what the remat policy reruns."""
  T, C, L = model.block_size, model.n_embd, model.n_layer
  one_matmul = 2 * T * C  # per token: one matmul over every pair of its sequence
  recompute = REMAT_RECOMPUTE.get(options.remat, (16, 4))[1]
  if not options.fused_attention:
    return L * (12 * T * C + recompute * T * C)
  share = calls.causal_attention_flops(1, 1, T, T, 1, 1) / (2 * T * T)
  matmuls = FUSED_MATMULS[options.attention] + 2 * options.recomputes_attention_forward()
  return L * one_matmul * share * matmuls


def step_flops(config: ml_collections.ConfigDict, model: ModelConfig,
               options: StepOptions) -> float:
  """FLOPs of one step as run: 6N per token for the weights' matmuls, the attention as
  attention_flops_per_token counts it, the blocks' matmuls the remat policy reruns, and with a
  chunked loss the logits recomputed in the backward pass (2VC per token)."""
  tokens = config.batch_size * config.grad_accum_steps * config.block_size
  C = model.n_embd
  per_token = params_lib.flops_per_token(model) - 12 * model.n_layer * model.block_size * C
  per_token += attention_flops_per_token(model, options)
  # REMAT_RECOMPUTE counts GPT-2's block (12C^2 weights); other MLPs and GQA scale it
  per_token += model.n_layer * REMAT_RECOMPUTE.get(
      options.remat, (16, 4))[0] * memory_model.block_weights(model) // 12
  if options.loss_chunk_tokens:
    per_token += 2 * model.vocab_size * C
  return per_token * tokens


def step_roofline(target, model: ModelConfig, options: StepOptions, flops: float,
                  bytes_accessed: float | None, config: ml_collections.ConfigDict,
                  mesh_shape) -> float | None:
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
    # A chunked loss still writes and reads every logit (twice): the traffic of the plain loss.
    activations = memory_model.activation_terms(model,
                                                dataclasses.replace(options, loss_chunk_tokens=0),
                                                tokens, tensor, fsdp)
    bytes_accessed = config.grad_accum_steps * (3 * total_params / tensor * s + 4 *
                                                (activations["logits"] + model.n_layer *
                                                 (activations["channels"] + activations["scores"])))
    bytes_accessed += optimizer_bytes(model, mesh_shape, config.optimizer)
  memory = bytes_accessed / chip.memory_bandwidth if chip.memory_bandwidth else 0.0
  # GPUs launch each kernel: about 60 per layer and 60 more per micro-batch in compiled steps.
  launches = (60 * model.n_layer +
              60) * config.grad_accum_steps * KERNEL_LAUNCH_SECONDS * (target.platform == "gpu")
  return (max(flops / peak, memory) + launches +
          communication_seconds(target, model, config, mesh_shape))


def optimizer_bytes(model: ModelConfig, mesh_shape, optimizer: str = "adamw") -> float:
  """Bytes one device moves in the optimizer's pass over its state: AdamW reads parameters,
  gradients and both moments and writes parameters and moments, 7 float32 values a parameter;
  Muon keeps one moment of the hidden matrices (attention and MLP): 5 values for those."""
  _, fsdp, tensor = mesh_shape
  counts = params_lib.count_params(model)
  total = counts.total
  if optimizer == "muon":
    matrices = model.n_layer * (counts.attention + counts.mlp)  # their few biases: noise
    return 4 * (7 * (total - matrices) + 5 * matrices) / (fsdp * tensor)
  return 7 * 4 * total / (fsdp * tensor)


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
