"""The analytic memory model: what a train step keeps per device, from the architecture alone.

The textbook count of what the backward pass needs (Korthikanti et al. 2022), weighted by
multipliers fitted to XLA's compiles of gptjax's step per platform, dtype, remat and dropout
(memory_model.json, written by tools/calibrate_memory.py). The planner uses it where it cannot
compile (its compile-only library is missing) and to rank the search's candidates in milliseconds.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
from typing import Any

from gptjax import params as params_lib
from gptjax.config import ModelConfig


def dtype_bytes(dtype: str) -> int:
  return 4 if dtype == "float32" else 2


def activation_terms(config: ModelConfig,
                     tokens: int,
                     tensor: int = 1,
                     fsdp: int = 1) -> dict[str, float]:
  """What a train step's backward pass needs kept, in bytes per device, before XLA's choices.

  Args:
    config: the architecture with dtype, dropout, remat and attention decided (for_platform).
    tokens: tokens of one micro-batch on one device, (batch_size / (data * fsdp)) * block_size.
    tensor, fsdp: the mesh's tensor and fsdp sizes.
  Returns:
    logits: the logits in the compute dtype, their float32 copy and its gradient (N x V).
    channels: one block's saved activations along C: residual and norm inputs (4C), q/k/v,
      attention output and MLP hidden before and after GELU (12C, split over `tensor`), and the
      residual dropout masks (Korthikanti et al. 2022).
    scores: one block's attention scores (float32), probabilities and their dropout mask, H x T a
      token; with a fused kernel (cudnn, splash, flash) only its softmax statistics.
    block_input: what remat keeps of a block (its input, C).
    policy_saved: what the remat policy keeps of a block beyond its input (policy_saved_per_token).
    gathered_layer: one block's weights all-gathered in the compute dtype (FSDP only).
  With loss_chunk_tokens the logits are one chunk's (float32 logits and probabilities) and the
  float32 gradient of the head it accumulates.
  """
  s, mask = dtype_bytes(config.dtype), int(config.dropout > 0)
  C, T, heads = config.n_embd, config.block_size, config.n_head // tensor
  logits = tokens * (config.vocab_size / tensor) * (s + 8)
  if config.loss_chunk_tokens:
    chunk = min(tokens, config.loss_chunk_tokens)
    logits = chunk * (config.vocab_size / tensor) * 8 + config.vocab_size * C / tensor * 4
  return dict(logits=logits,
              channels=tokens * (4 * C * s + 12 * C / tensor * s + 2 * C * mask),
              scores=tokens * heads * (T * (4 + s + mask) if config.attention == "xla" else 4),
              block_input=tokens * C * s,
              policy_saved=tokens * policy_saved_per_token(config, tensor),
              gathered_layer=(fsdp > 1) * 12 * C * C / tensor * s)


def policy_saved_per_token(config: ModelConfig, tensor: int = 1) -> float:
  """Bytes a token's block keeps under its remat policy besides the block input (not calibrated
  against compiles yet: the named matmul outputs, in the compute dtype). "dots_no_batch": the
  weight matmuls' outputs (q/k/v, the attention projection, the MLP's two); "dots" adds the
  attention's own matmuls (with XLA's einsum, the H x T scores); "*attn_out": the attention output
  (and a fused kernel's softmax statistics)."""
  s, C, heads = dtype_bytes(config.dtype), config.n_embd, config.n_head // tensor
  weights = (7 * C / tensor + 2 * C) * s
  attn_out = C / tensor * s + (heads * 4 if config.attention != "xla" else 0)
  scores = heads * config.block_size * s + C / tensor * s if config.attention == "xla" else 0
  return {
      "none": 0.0,
      "full": 0.0,
      "save_attn_out": attn_out,
      "dots_no_batch": weights,
      "dots_no_batch+attn_out": weights + attn_out,
      "dots": weights + scores,
  }[config.remat]


def memory_model_key(platform: str, config: ModelConfig) -> str:
  """The calibration a config uses: platform/dtype/remat/dropout."""
  dtype = "float32" if config.dtype == "float32" else "16bit"
  return (f"{platform}/{dtype}/{'remat' if config.remat != 'none' else 'no-remat'}/"
          f"{'dropout' if config.dropout > 0 else 'no-dropout'}")


def model_temporary_bytes(terms: dict[str, float], gradient_bytes: float, n_layer: int, remat: bool,
                          k: dict[str, float]) -> float:
  """XLA's temporaries of a train step: the terms weighted by calibrated multipliers `k`.

  Gradients are `k["gradients"]` of their float32 bytes (XLA on TPUs writes part of them straight
  into the donated optimizer state). Without remat every layer's saved activations are alive when
  the logits are, and the last block's backward adds its working set: their sum. With remat only
  the block inputs (and what the policy saves) are kept; the peak is the larger of the logits' phase and one block's
  recomputation (its working set), on top of the kept inputs.
  """
  logits = k["logits"] * terms["logits"]
  working = k["channels_work"] * terms["channels"] + k["scores_work"] * terms["scores"]
  if remat:
    kept = k["block_input"] * terms["block_input"] + terms.get("policy_saved", 0.0)
    peak = n_layer * kept + max(logits, working)
  else:
    saved = k["channels"] * terms["channels"] + k["scores"] * terms["scores"]
    peak = logits + n_layer * saved + working
  return (k["gradients"] * gradient_bytes + peak +
          k.get("gathered_layer", 2.0) * terms["gathered_layer"])


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


@functools.lru_cache(maxsize=None)
def calibration() -> dict[str, Any]:
  """The multipliers fitted to XLA's compiles (memory_model.json, by tools/calibrate_memory.py)."""
  return json.loads((importlib.resources.files("gptjax.planner") / "memory_model.json").read_text())


def generation_memory(model: ModelConfig, batch: int) -> Generation:
  """Sampling `batch` sequences on one device: float32 params, the KV cache at block_size, and
  the prompt's pass at full context (its logits, and one layer's scores and MLP activations)."""
  s, T, C = dtype_bytes(model.dtype), model.block_size, model.n_embd
  return Generation(batch=batch,
                    params=4 * params_lib.count_params(model).total,
                    kv_cache=2 * model.n_layer * batch * T * C * s,
                    working=batch * T * (model.vocab_size * (4 + s) + model.n_head * T *
                                         (4 + s) + 8 * C * s))
