"""Custom calls priced from their shapes, and what the planner's rooflines are made of.

  Cost, Device                    FLOPs, bytes, seconds of kernels; a chip's peaks
  custom_kernel(instr, module)    cuBLAS gemms at 2 x M x N x K; cuDNN's fused attention and
                                  Pallas attention kernels (splash, flash) by the (query, key)
                                  tile pairs they compute; other Pallas kernels by their bytes
  FusedAttention                  cuDNN's attention of a step, priced in place of XLA's
  causal_attention_flops(...)     the matmul FLOPs of a causal attention kernel
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

from gptjax.planner import hlo

GEMM_TARGETS = ("__cublas$gemm", "__cublas$lt$matmul", "__cublas$lt$matmul$f8")
# Pallas attention kernels by name: (name prefix, phase, matmuls per computed (query, key) tile
# pair): the forward QK^T and PV; splash's and flash's dq kernel S, dP, dQ; their dkv kernel S, dP,
# dV, dK (5 with splash's fused backward, which also makes dQ).
PALLAS_ATTENTION = (("splash_mha_fwd", "fwd", 2), ("splash_mha_dq", "dq", 3),
                    ("splash_mha_dkv", "dkv", 4), ("flash_mha_bwd_dq", "dq", 3),
                    ("flash_mha_bwd_dkv", "dkv", 4), ("flash_attention", "fwd", 2))
ATTENTION_TILE = 128  # tile of the fused attention kernels: splash's and flash's default, cuDNN's


@dataclasses.dataclass
class Cost:
  flops: float = 0.0
  bytes: float = 0.0
  seconds: float = 0.0
  kernels: float = 0.0

  def __add__(self, other: "Cost") -> "Cost":
    return Cost(self.flops + other.flops, self.bytes + other.bytes, self.seconds + other.seconds,
                self.kernels + other.kernels)

  def __sub__(self, other: "Cost") -> "Cost":
    return self + other * -1

  def __mul__(self, n: float) -> "Cost":
    return Cost(self.flops * n, self.bytes * n, self.seconds * n, self.kernels * n)


@dataclasses.dataclass(frozen=True)
class Device:
  """What the roofline needs of a chip."""
  peak_flops: float
  peak_flops_fp32: float
  bandwidth: float
  link_bandwidth: float = 0.0
  launch_seconds: float = 0.0  # per kernel (GPUs)

  def seconds(self, flops: float, moved: float, fp32: bool = False) -> float:
    peak = self.peak_flops_fp32 if fp32 else self.peak_flops
    return max(flops / peak if peak else 0.0, moved / self.bandwidth if self.bandwidth else 0.0)


def causal_attention_flops(batch: int,
                           heads: int,
                           queries: int,
                           keys: int,
                           head_dim: int,
                           matmuls: int,
                           tile: int | None = ATTENTION_TILE) -> float:
  """Matmul FLOPs of a causal attention kernel: `matmuls` matmuls of 2 x head_dim FLOPs for each
  (query, key) pair it computes. Block-sparse kernels compute whole tiles on and below the
  diagonal; tile=None (or a length the tile does not divide) counts the exact causal pairs."""
  if tile is None or queries % tile or keys % tile:
    pairs = queries * (queries + 1) / 2 + queries * (keys - queries)
  else:
    nq, nk = queries // tile, keys // tile
    offset = nk - nq  # keys beyond the queries' own (a decode-style prefix) are all visible
    pairs = sum(min(nk, i + 1 + offset) for i in range(nq)) * tile * tile
  return float(batch * heads * pairs * 2 * head_dim * matmuls)


@dataclasses.dataclass(frozen=True)
class FusedAttention:
  """cuDNN's fused causal attention, priced from its shapes in place of XLA's attention kernels
  (cuDNN compiles only beside a GPU: the planner compiles XLA's attention and substitutes)."""
  batch: int  # per device
  heads: int  # per device
  length: int
  head_dim: int
  itemsize: int  # bytes of the compute dtype
  forward_passes: int  # layers x micro-batches x (1, or 2 where remat reruns the forward)
  backward_passes: int  # layers x micro-batches

  def is_scores(self, dims: tuple[int, ...]) -> bool:
    """Whether an array is XLA's attention scores: rank >= 3, ending in (T, T), the leading
    dimensions holding batch x heads sequences (an activation (B, T, C) with C = T holds fewer)."""
    return (len(dims) >= 3 and dims[-2:] == (self.length, self.length) and
            math.prod(dims[:-2]) >= self.batch * self.heads)

  def cost(self, device: Device) -> Cost:
    """The forward kernel reads q, k, v and writes the output and its softmax statistics; the
    backward reads those and the output's gradient and writes dq, dk, dv (dq accumulated in
    float32)."""
    b, h, t, d = self.batch, self.heads, self.length, self.head_dim
    qkv = b * t * h * d * self.itemsize
    statistics = b * h * t * 4
    forward = Cost(causal_attention_flops(b, h, t, t, d, 2), 4 * qkv + statistics)
    backward = Cost(causal_attention_flops(b, h, t, t, d, 5),
                    8 * qkv + statistics + 2 * b * t * h * d * 4)
    for part in (forward, backward):
      part.seconds, part.kernels = device.seconds(part.flops, part.bytes) + device.launch_seconds, 1
    return forward * self.forward_passes + backward * self.backward_passes


@dataclasses.dataclass
class Kernel:
  """A custom call priced from its shapes."""
  kind: str
  flops: float
  bytes: float
  fp32: bool = False
  seen_by_xla: bool = True  # False: a Pallas kernel XLA's TPU cost analysis counts as nothing


def custom_kernel(instr: hlo.Instr, module: hlo.Module) -> Kernel | None:
  """A cuBLAS gemm, cuDNN fused attention or Pallas (Mosaic) kernel priced from its shapes; None
  for other custom calls (priced by the bytes they move)."""
  target = hlo.custom_call_target(instr) or ""
  operands = [module.shape_of(o) for o in instr.operands]
  moved = sum(hlo.shape_bytes(s) for s in operands) + sum(
      hlo.array_bytes(dtype, d)
      for dtype, d, _ in hlo.arrays(instr.shape)
      if dtype not in ("s8", "u8") or len(d) != 1)  # not the workspace
  if target in GEMM_TARGETS:
    numbers = hlo.backend_config(instr).get("gemm_backend_config",
                                            {}).get("dot_dimension_numbers", {})
    lhs = hlo.dims(operands[0])
    k = math.prod(lhs[int(d)] for d in numbers.get("lhs_contracting_dimensions", []))
    flops = 2.0 * math.prod(hlo.dims(instr.shape)) * k
    return Kernel("cublas gemm", flops, moved, operands[0].startswith("f32"))
  if target.startswith("__cudnn$fmha"):
    return Kernel("cudnn attention", _cudnn_attention_flops(instr, target, operands), moved)
  if target == "tpu_custom_call":
    return _pallas(instr, operands, moved)
  return None


def _cudnn_attention_flops(instr, target: str, operands: list[str]) -> float:
  """cuDNN's flash attention: forward 2 matmuls per computed pair, backward 5 (S recomputed, dP,
  dV, dQ, dK); the (query, key) pairs of a causal mask by tiles."""
  config = hlo.backend_config(instr).get("cudnn_fmha_backend_config", {})
  q, k = hlo.dims(operands[0]), hlo.dims(operands[1])
  numbers = config.get("bmm1_dot_dimension_numbers") or config.get(
      "bmm1_grad_gemm1_dot_dimension_numbers", {})
  # The right operand of either is q or k in their layout: batch dims (0, 1) BNTH, (0, 2) BTNH.
  head_major = numbers.get("rhs_batch_dimensions", ["0", "2"])[1:] == ["1"]
  batch, dim = q[0], q[3]
  heads, queries = (q[1], q[2]) if head_major else (q[2], q[1])
  keys = k[2] if head_major else k[1]
  matmuls = 5 if "Backward" in target else 2
  if config.get("mask_type", "").upper().startswith("CAUSAL") or "causal" in str(
      config.get("mask_type", "")).lower():
    return causal_attention_flops(batch, heads, queries, keys, dim, matmuls)
  return float(batch * heads * queries * keys * 2 * dim * matmuls)


def _pallas(instr, operands: list[str], moved: float) -> Kernel:
  """A Pallas kernel: XLA counts it when it declares a cost estimate (those FLOPs are used);
  gptjax's causal attention kernels are priced by name from q's shape (B..., H, T, D) and the
  tiles in their kernel_metadata; any other kernel by its bytes."""
  declared = re.search(r'"cost_estimate":\{"flops":"(\d+)"', instr.attrs)
  if declared:
    return Kernel("pallas (declared cost)", float(declared.group(1)), moved)
  name = instr.name
  phase = next(((p, n) for prefix, p, n in PALLAS_ATTENTION if prefix in name), None)
  floats = [
      hlo.dims(s) for s in operands if s[:4] in ("bf16", "f32[", "f16[") and len(hlo.dims(s)) >= 3
  ]
  if phase is None or not floats:
    return Kernel("pallas", 0.0, moved, seen_by_xla=False)
  metadata = _kernel_metadata(instr.attrs)
  suffix = {"fwd": "", "dq": "_dq", "dkv": "_dkv"}[phase[0]]
  block_q = metadata.get("block_q" + suffix) or metadata.get("block_q") or ATTENTION_TILE
  block_kv = metadata.get("block_kv" + suffix) or metadata.get("block_kv") or ATTENTION_TILE
  if name.startswith("flash_mha_bwd") and re.search(r"block_q_(\d+)", name):
    block_q = int(re.search(r"block_q_(\d+)", name).group(1))
    block_kv = int(re.search(r"block_k_(\d+)", name).group(1))
  matmuls = 5 if phase[0] == "dkv" and metadata.get("use_fused_bwd_kernel") else phase[1]
  q = floats[0]
  tile = block_q if block_q == block_kv else None
  flops = causal_attention_flops(math.prod(q[:-3]), q[-3], q[-2], q[-2], q[-1], matmuls, tile)
  return Kernel(f"pallas attention {phase[0]}", flops, moved, seen_by_xla=False)


def _kernel_metadata(attrs: str) -> dict:
  """The tiles a Pallas kernel records in kernel_metadata's xprof_metadata JSON."""
  match = re.search(r'xprof_metadata\\?"\s*:\s*\\?"(\{.*?\})\\?"', attrs, re.S)
  if not match:
    return {}
  try:
    return json.loads(match.group(1).replace('\\"', '"'))
  except json.JSONDecodeError:
    return {}
