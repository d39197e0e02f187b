"""Hugging Face Llama (and Qwen3) format out: a modern gptjax model as `LlamaForCausalLM`.

A gptjax model with rotary positions, RMSNorm and a SwiGLU MLP (grouped-query attention, biases and
an untied head optional) is Llama's architecture, and exports to its layout for `transformers`;
with qk_norm as well it is Qwen3's (Llama plus an RMSNorm of q and k per head before RoPE,
`Qwen3ForCausalLM`). Both sides use the same conventions, so the logits are equal: RoPE's
rotate_half pairs (dimension i with i + D/2, angle position * base^(-2i/D)), RMSNorm over float32
with epsilon 1e-5, silu(gate) * up, the 1/sqrt(D) attention scale, and key/value head g serving
query heads g * H/H_kv ... (g + 1) * H/H_kv - 1 in a row. What these formats cannot hold (learned
positions, LayerNorm, a GELU or ReLU² MLP, a logit soft-cap) is named in one line.

The tensors (HF's nn.Linear weights are (out, in): gptjax's kernels transposed):

  wte (V, C)                          model.embed_tokens.weight
  h_i/ln_1/scale, ln_2/scale          model.layers.i.input_layernorm / post_attention_layernorm
  attn/c_attn (C, 3, H, D)            self_attn.q_proj / k_proj / v_proj (its [:, 0], [:, 1], [:, 2])
  attn/c_q (C, H, D), c_kv (C, 2, H_kv, D)   (grouped-query attention) q_proj; k_proj, v_proj
  attn/q_norm, k_norm (D,)            self_attn.q_norm / k_norm (Qwen3)
  attn/c_proj (H, D, C)               self_attn.o_proj
  mlp/c_fc (C, 2, F), mlp/c_proj (F, C)   mlp.gate_proj ([:, 0]), up_proj ([:, 1]); down_proj
  ln_f/scale                          model.norm.weight
  lm_head/kernel (C, V)               lm_head.weight (untied heads; a tied one is wte, as HF ties it)
"""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util
from safetensors.numpy import save_file

from gptjax.errors import UserError
from gptjax.layers import NORM_EPSILON
from gptjax.model_config import ModelConfig
from gptjax.params import to_layout

SAFETENSORS = "model.safetensors"
# What Llama's architecture is, as gptjax's options: the fields a model must have to export.
LLAMA_OPTIONS = dict(positions="rope", norm="rmsnorm", mlp="swiglu")


def export_problems(config: ModelConfig) -> list[str]:
  """What keeps `config` from Llama's (or, with qk_norm, Qwen3's) format, one phrase each."""
  problems = [
      f"{field}={getattr(config, field)!r} (Llama's is {value!r})"
      for field, value in LLAMA_OPTIONS.items()
      if getattr(config, field) != value
  ]
  if config.logit_softcap:
    problems.append(f"logit_softcap={config.logit_softcap!r} (Llama's logits are not capped)")
  if config.qk_norm and config.bias:
    problems.append("bias=True with qk_norm (Qwen3, the format with q and k norms, has no MLP "
                    "biases)")
  return problems


def check_exportable(config: ModelConfig) -> None:
  """Raises the one-line UserError that names what neither GPT-2's nor Llama's format holds."""
  problems = export_problems(config)
  if problems:
    beyond = ", ".join(config.non_gpt2_options()) or "its options"
    raise UserError(f"{beyond}: beyond GPT-2's format, and Hugging Face's Llama format cannot hold "
                    f"{', '.join(problems)}. Fix: the run stays a gptjax run (`python -m "
                    f"gptjax.sample --run_dir=RUN` reads it); a model trained with `python -m "
                    f"gptjax.train --config.positions=rope --config.norm=rmsnorm "
                    f"--config.mlp=swiglu --config.logit_softcap=0` exports to Llama.")


def architecture(config: ModelConfig) -> str:
  """The transformers class that loads the export: LlamaForCausalLM, or with qk_norm Qwen3's."""
  return "Qwen3ForCausalLM" if config.qk_norm else "LlamaForCausalLM"


def hf_config_dict(config: ModelConfig) -> dict:
  """A complete LlamaConfig (or Qwen3Config) dict for `config`."""
  rope = dict(rope_type="default", rope_theta=config.rope_base)
  common = dict(
      architectures=[architecture(config)],
      vocab_size=config.vocab_size,
      hidden_size=config.n_embd,
      intermediate_size=config.mlp_width,
      num_hidden_layers=config.n_layer,
      num_attention_heads=config.n_head,
      num_key_value_heads=config.kv_heads,
      head_dim=config.head_dim,
      hidden_act="silu",
      max_position_embeddings=config.block_size,
      initializer_range=0.02,
      rms_norm_eps=NORM_EPSILON,
      use_cache=True,
      tie_word_embeddings=config.tie_embeddings,
      # transformers 5 reads rope_parameters, 4.x rope_theta: both, the same base
      rope_parameters=rope,
      rope_theta=config.rope_base,
      rope_scaling=None,
      attention_bias=config.bias,
      attention_dropout=0.0,
      torch_dtype="float32")
  if config.qk_norm:
    return dict(common,
                model_type="qwen3",
                use_sliding_window=False,
                sliding_window=None,
                max_window_layers=config.n_layer)
  return dict(common, model_type="llama", mlp_bias=config.bias, pretraining_tp=1)


def hf_tensors(config: ModelConfig, params) -> dict[str, np.ndarray]:
  """The HF tensors of `params` (either layer layout), named as LlamaForCausalLM names them."""
  flat = traverse_util.flatten_dict(to_layout(jax.device_get(nn.meta.unbox(params)), False))
  C, H, D, H_kv = config.n_embd, config.n_head, config.head_dim, config.kv_heads

  def get(*path: str) -> np.ndarray:
    return np.asarray(flat[path], np.float32)

  tensors = {"model.embed_tokens.weight": get("wte"), "model.norm.weight": get("ln_f", "scale")}
  if not config.tie_embeddings:
    tensors["lm_head.weight"] = get("lm_head", "kernel").T
  for i in range(config.n_layer):
    block, hf = f"h_{i}", f"model.layers.{i}."
    if config.grouped:
      kv = get(block, "attn", "c_kv", "kernel")  # (C, 2, H_kv, D)
      qkv = [get(block, "attn", "c_q", "kernel").reshape(C, H * D)
            ] + [kv[:, j].reshape(C, H_kv * D) for j in (0, 1)]
    else:
      qkv = [get(block, "attn", "c_attn", "kernel")[:, j].reshape(C, H * D) for j in range(3)]
    for name, kernel in zip(("q_proj", "k_proj", "v_proj"), qkv):
      tensors[f"{hf}self_attn.{name}.weight"] = kernel.T
    tensors[f"{hf}self_attn.o_proj.weight"] = get(block, "attn", "c_proj",
                                                  "kernel").reshape(H * D, C).T
    fc = get(block, "mlp", "c_fc", "kernel")  # (C, 2, F): gate, up
    tensors[f"{hf}mlp.gate_proj.weight"] = fc[:, 0].T
    tensors[f"{hf}mlp.up_proj.weight"] = fc[:, 1].T
    tensors[f"{hf}mlp.down_proj.weight"] = get(block, "mlp", "c_proj", "kernel").T
    tensors[f"{hf}input_layernorm.weight"] = get(block, "ln_1", "scale")
    tensors[f"{hf}post_attention_layernorm.weight"] = get(block, "ln_2", "scale")
    if config.qk_norm:
      for name in ("q_norm", "k_norm"):
        tensors[f"{hf}self_attn.{name}.weight"] = get(block, "attn", name, "scale")
    if config.bias:
      if config.grouped:
        kv = get(block, "attn", "c_kv", "bias")  # (2, H_kv, D)
        qkv = [get(block, "attn", "c_q", "bias").reshape(-1), kv[0].reshape(-1), kv[1].reshape(-1)]
      else:
        qkv = [get(block, "attn", "c_attn", "bias")[j].reshape(-1) for j in range(3)]
      for name, bias in zip(("q_proj", "k_proj", "v_proj"), qkv):
        tensors[f"{hf}self_attn.{name}.bias"] = bias
      tensors[f"{hf}self_attn.o_proj.bias"] = get(block, "attn", "c_proj", "bias")
      fc = get(block, "mlp", "c_fc", "bias")  # (2, F)
      tensors[f"{hf}mlp.gate_proj.bias"], tensors[f"{hf}mlp.up_proj.bias"] = fc[0], fc[1]
      tensors[f"{hf}mlp.down_proj.bias"] = get(block, "mlp", "c_proj", "bias")
  return {name: np.ascontiguousarray(value) for name, value in tensors.items()}


def save_hf_llama(model, params, path: str) -> str:
  """Writes `path`/config.json and model.safetensors for `transformers` (Llama or Qwen3); returns
  the class that loads them.

  Raises:
    UserError: the model has an option neither format holds (named, with what to train instead).
  """
  config = model.config
  check_exportable(config)
  tensors = hf_tensors(config, params)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
    json.dump(hf_config_dict(config), f, indent=2)
  save_file(tensors, os.path.join(path, SAFETENSORS), metadata={"format": "pt"})
  return architecture(config)
