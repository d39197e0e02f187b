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
from gptjax.planner.options import StepOptions


def dtype_bytes(dtype: str) -> int:
  return 4 if dtype == "float32" else 2


# What each remat policy keeps of a block besides its input, in multiples of C a token: "dots" every
# matmul's output (q/k/v 3C, attention output C, projections C + C, MLP hidden 4C), the no-batch
# policies those of the weights' matmuls, the attn_out ones the attention's output.
POLICY_KEPT_CHANNELS = {
    "none": 0,
    "full": 0,
    "dots": 10,
    "dots_no_batch": 9,
    "save_attn_out": 1,
    "dots_no_batch+attn_out": 10
}
# Layers under nn.scan keep their residuals in stacked (L, ...) buffers, and XLA cannot free a
# layer's inputs early: compiled for a v5e, 350M_1024 held 1.3x the unrolled step's temporaries
# (docs/planner.md). Not yet calibrated on gptjax's own scan (the model's option is newer).
SCAN_KEPT_FACTOR = 1.3
# The settings tools/calibrate_memory.py has not fitted yet: their terms are counted at face value.
UNCALIBRATED = "fused attention, remat policies other than full, a chunked loss, scan_layers"


def activation_terms(config: ModelConfig,
                     options: StepOptions,
                     tokens: int,
                     tensor: int = 1,
                     fsdp: int = 1) -> dict[str, float]:
  """What a train step's backward pass needs kept, in bytes per device, before XLA's choices.

  Args:
    config: the architecture with dtype and dropout.
    options: the step's attention, remat policy, chunked loss (options.step_options).
    tokens: tokens of one micro-batch on one device, (batch_size / (data * fsdp)) * block_size.
    tensor, fsdp: the mesh's tensor and fsdp sizes.
  Returns:
    logits: the logits in the compute dtype, their float32 copy and its gradient (N x V); with a
      chunked loss one chunk's, and the float32 gradient of the head it accumulates (V x C).
    channels: one block's saved activations along C: residual and norm inputs (4C), q/k/v,
      attention output and MLP hidden before and after GELU (block_channels: 12C for GPT-2,
      split over `tensor`), and the residual dropout masks (Korthikanti et al. 2022).
    scores: one block's attention scores (float32), probabilities and their dropout mask, H x T a
      token; with a fused kernel (cuDNN, splash, flash) only its softmax statistics.
    block_input: what remat keeps of a block (its input, C).
    policy_kept: what the remat policy keeps of a block besides its input (POLICY_KEPT_CHANNELS).
    gathered_layer: one block's weights all-gathered in the compute dtype (FSDP only).
  """
  s, mask = dtype_bytes(config.dtype), int(config.dropout > 0)
  C, T, heads = config.n_embd, config.block_size, config.n_head // tensor
  vocab = config.vocab_size / tensor
  logits = tokens * vocab * (s + 8)
  if options.loss_chunk_tokens:
    logits = min(tokens, options.loss_chunk_tokens) * vocab * (s + 8) + vocab * C * 4
  statistics = heads * 4
  scores = tokens * (statistics if options.fused_attention else heads * T * (4 + s + mask))
  kept = POLICY_KEPT_CHANNELS.get(options.remat, 0) * C / tensor * s
  if options.remat == "dots" and not options.fused_attention:
    kept += heads * T * s  # the scores' matmul output
  if options.fused_attention and not options.recomputes_attention_forward():
    kept += statistics
  return dict(logits=logits,
              channels=tokens * (4 * C * s + block_channels(config) / tensor * s + 2 * C * mask),
              scores=scores,
              block_input=tokens * C * s,
              policy_kept=tokens * kept,
              gathered_layer=(fsdp > 1) * block_weights(config) / tensor * s)


def block_channels(config: ModelConfig) -> int:
  """Activations a block keeps per token that the tensor axis splits: q, k, v and the attention
  output (4C with GPT-2's attention; GQA's k and v are H_kv x D wide), q and k once more for each
  of qk_norm and RoPE, and the MLP's hidden activations (before and after GELU or ReLU², 2F;
  SwiGLU's gate, up and product, 3F). 12C for GPT-2."""
  C, kv = config.n_embd, config.kv_heads * config.head_dim
  attention = 2 * C + 2 * kv + (config.qk_norm + (config.positions == "rope")) * (C + kv)
  return attention + (3 if config.mlp == "swiglu" else 2) * config.mlp_width


def block_weights(config: ModelConfig) -> int:
  """A block's kernel weights (what FSDP gathers per layer; its norms and biases are noise):
  12C^2 for GPT-2."""
  C, kv, F = config.n_embd, config.kv_heads * config.head_dim, config.mlp_width
  return C * (C + 2 * kv) + C * C + (3 if config.mlp == "swiglu" else 2) * F * C


def memory_model_key(platform: str, config: ModelConfig, options: StepOptions) -> str:
  """The calibration a config uses: platform/dtype/remat/dropout."""
  dtype = "float32" if config.dtype == "float32" else "16bit"
  return (f"{platform}/{dtype}/{'remat' if options.remat_on else 'no-remat'}/"
          f"{'dropout' if config.dropout > 0 else 'no-dropout'}")


def model_temporary_bytes(terms: dict[str, float],
                          gradient_bytes: float,
                          n_layer: int,
                          remat: bool,
                          k: dict[str, float],
                          scan_layers: bool = False) -> float:
  """XLA's temporaries of a train step: the terms weighted by calibrated multipliers `k`.

  Gradients are `k["gradients"]` of their float32 bytes (XLA on TPUs writes part of them straight
  into the donated optimizer state). Without remat every layer's saved activations are alive when
  the logits are, and the last block's backward adds its working set: their sum. With remat only
  the block inputs (and what the policy keeps) are kept; the peak is the larger of the logits'
  phase and one block's recomputation (its working set), on top of the kept inputs. Layers under
  a scan keep SCAN_KEPT_FACTOR times their share.
  """
  logits = k["logits"] * terms["logits"]
  working = k["channels_work"] * terms["channels"] + k["scores_work"] * terms["scores"]
  layers = n_layer * (SCAN_KEPT_FACTOR if scan_layers else 1.0)
  if remat:
    kept = k["block_input"] * terms["block_input"] + terms.get("policy_kept", 0.0)
    peak = layers * kept + max(logits, working)
  else:
    saved = k["channels"] * terms["channels"] + k["scores"] * terms["scores"]
    peak = logits + layers * saved + working
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


def _mlp_activations(model: ModelConfig) -> int:
  return (3 if model.mlp == "swiglu" else 2) * model.mlp_width  # 8C for GPT-2


def generation_memory(model: ModelConfig, batch: int) -> Generation:
  """Sampling `batch` sequences on one device: float32 params, the KV cache at block_size, and
  the prompt's pass at full context (its logits, and one layer's scores and MLP activations)."""
  s, T = dtype_bytes(model.dtype), model.block_size
  return Generation(batch=batch,
                    params=4 * params_lib.count_params(model).total,
                    kv_cache=2 * model.n_layer * batch * T * model.kv_heads * model.head_dim * s,
                    working=batch * T * (model.vocab_size * (4 + s) + model.n_head * T *
                                         (4 + s) + _mlp_activations(model) * s))
