"""The options of the train step the planner prices, read from a config in one place.

  options = step_options(config, platform)   attention (decided for the platform), remat policy,
                                             chunked loss, layers under a scan
  config, result = decide_remat(config, memory, attempt)   remat "auto" decided for a device

A config of an older gptjax (remat a bool; no loss_chunk_tokens or scan_layers) reads as the step
it runs: remat True is "full", False "none", a plain loss, unrolled layers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import ml_collections

# REMAT_POLICIES: the planner prices the names the model runs (model_config defines them).
from gptjax.model_config import REMAT_POLICIES  # noqa: F401
from gptjax.model_config import REMAT_AUTO, REMAT_AUTO_ORDER, ModelConfig, remat_name
from gptjax.units import gib

REQUIRED_HEADROOM = 0.10  # remat "auto" and --search keep this share of device memory free
# Attention kernels that never hold the (T, T) scores: only the softmax statistics.
FUSED_ATTENTION = ("cudnn", "splash", "flash")
# Fused kernels that name their residuals ("attn_out"), so that a policy saving that name keeps
# them; cuDNN's (through jax.nn.dot_product_attention) cannot, and reruns its forward pass.
NAMED_RESIDUALS = ("splash", "flash")


@dataclasses.dataclass(frozen=True)
class StepOptions:
  attention: str  # xla, cudnn, splash or flash, as the step compiled for the platform runs it
  remat: str  # one of REMAT_POLICIES
  loss_chunk_tokens: int = 0  # 0: the plain loss over (N, V) logits; else chunks of this many
  scan_layers: bool = False  # the blocks under nn.scan, parameters stacked on a layers axis

  @property
  def fused_attention(self) -> bool:
    return self.attention in FUSED_ATTENTION

  @property
  def remat_on(self) -> bool:
    return self.remat != "none"

  def recomputes_attention_forward(self) -> bool:
    """Whether the backward pass runs the attention's forward again: any policy but none for
    XLA's attention (its scores are saved only by "dots", and never whole under remat) and for
    fused kernels, except the attn_out policies with kernels that name their residuals."""
    if self.remat == "none":
      return False
    if self.fused_attention:
      return not (self.attention in NAMED_RESIDUALS and self.remat.endswith("attn_out"))
    return self.remat != "dots"


def step_options(config: ml_collections.ConfigDict, platform: str) -> StepOptions:
  """The step's options for `platform` ("cpu", "gpu", "tpu"); attention "auto" decided there."""
  model = ModelConfig.from_config(config).for_platform(platform)
  return StepOptions(attention=model.attention,
                     remat=remat_name(config.get("remat", False)),
                     loss_chunk_tokens=int(config.get("loss_chunk_tokens", 0) or 0),
                     scan_layers=bool(config.get("scan_layers", False)))


def decide_remat(config: ml_collections.ConfigDict,
                 device_memory_bytes: int,
                 attempt: Callable[[ml_collections.ConfigDict], tuple[Any, int]],
                 say: Callable[[str], None] = lambda line: None) -> tuple[Any, Any]:
  """(`config` with remat "auto" decided, attempt's result for it). `attempt(config)` compiles or
  prices the step of a config with a definite remat and returns (its result, bytes per device).

  "auto" takes the first of REMAT_AUTO_ORDER (least recomputation, so fastest, first) whose step
  leaves REQUIRED_HEADROOM of the device's memory free, and "full" when none does (whether that
  fits is then for the caller to say). Any other remat: attempt(config) once. `say` gets one
  line naming the choice and what the policies before it needed.
  """
  if remat_name(config.remat) != REMAT_AUTO:
    return config, attempt(config)[0]
  limit, tried = (1 - REQUIRED_HEADROOM) * device_memory_bytes, []
  for policy in REMAT_AUTO_ORDER:
    decided = config.copy_and_resolve_references()
    decided.remat = policy
    result, needed = attempt(decided)
    tried.append(f"{policy} {gib(needed)}" if math.isfinite(needed) else f"{policy} refused by XLA")
    if needed <= limit or policy == REMAT_AUTO_ORDER[-1]:
      break
  say(f"remat auto: {policy} (the step per device: {', '.join(tried)}; the device has "
      f"{gib(device_memory_bytes)}, {100 * REQUIRED_HEADROOM:.0f}% kept free)")
  return decided, result
