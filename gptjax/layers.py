"""The GPT's building blocks beside attention: the dense layer, the norms, the MLPs, rotary positions.

GPT-2's choices are the defaults (LayerNorm, a 4x GELU MLP, learned positions in gptjax/model.py);
the architecture options (gptjax/model_config.py) pick the others: RMSNorm, a SwiGLU or ReLU²
MLP, RoPE, an untied head. Shapes as in gptjax/model.py: N tokens, C channels, F the MLP's
hidden width (ModelConfig.mlp_width), H heads, D head dim.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from gptjax.model_config import ModelConfig

INIT_STD = 0.02  # GPT-2's initialiser; residual projections are scaled by 1/sqrt(2 * n_layer)
NORM_EPSILON = 1e-5  # LayerNorm's (GPT-2's) and RMSNorm's alike


def compute_dtype(config: ModelConfig):
  return jnp.dtype(config.dtype)


class Dense(nn.Module):
  """y = x . kernel (+ bias), contracting x's trailing dims with the kernel's leading `in_shape`."""
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  axes: tuple[str | None, ...]  # logical names of the kernel's dims (in_shape + out_shape)
  use_bias: bool
  dtype: jnp.dtype
  std: float = INIT_STD

  @nn.compact
  def __call__(self, x):  # x: (N, *in_shape) -> (N, *out_shape)
    kernel = self.param("kernel",
                        nn.with_logical_partitioning(nn.initializers.normal(self.std), self.axes),
                        self.in_shape + self.out_shape, jnp.float32)
    n_in = len(self.in_shape)
    contracting = (tuple(range(1, 1 + n_in)), tuple(range(n_in)))
    y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                            (contracting, ((), ())))
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                             self.axes[n_in:]), self.out_shape,
                        jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


class Head(nn.Module):
  """The untied output head's kernel (C, V) (tie_embeddings=False): returned, not applied, so that
  the chunked loss can take it as the tied head's wte."""
  config: ModelConfig

  @nn.compact
  def __call__(self):
    return self.param(
        "kernel", nn.with_logical_partitioning(nn.initializers.normal(INIT_STD),
                                               ("embed", "vocab")),
        (self.config.n_embd, self.config.vocab_size), jnp.float32)


def norm(config: ModelConfig, name: str) -> nn.Module:
  """The residual stream's norm over C: GPT-2's LayerNorm (a bias when config.bias), or RMSNorm
  (a scale only, whatever config.bias), both with epsilon NORM_EPSILON."""
  scale_init = nn.with_logical_partitioning(nn.initializers.ones, ("embed",))
  if config.norm == "rmsnorm":
    return nn.RMSNorm(epsilon=NORM_EPSILON,
                      dtype=compute_dtype(config),
                      param_dtype=jnp.float32,
                      name=name,
                      scale_init=scale_init)
  return nn.LayerNorm(epsilon=NORM_EPSILON,
                      use_bias=config.bias,
                      dtype=compute_dtype(config),
                      param_dtype=jnp.float32,
                      name=name,
                      scale_init=scale_init,
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))


def head_norm(config: ModelConfig, name: str) -> nn.Module:
  """qk_norm's RMSNorm of q or k over a head's D dims, one (D,) scale shared by the heads."""
  return nn.RMSNorm(epsilon=NORM_EPSILON,
                    dtype=compute_dtype(config),
                    param_dtype=jnp.float32,
                    name=name,
                    scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("kv",)))


def rope(x, positions, base: float):
  """Rotary position embedding of x (B, T, H, D) at `positions` (T,) (traced in decoding).

  Llama's and Hugging Face's convention (rotate_half): dimension i of the first half and i + D/2
  of the second form a pair, turned by the angle position * base^(-2i/D); so a Llama checkpoint's
  q and k kernels are used as they are, with no interleaving permutation. Computed in float32.
  """
  half = x.shape[-1] // 2
  inverse_frequency = base**(-jnp.arange(half, dtype=jnp.float32) / half)  # (D/2,)
  angles = positions.astype(jnp.float32)[:, None] * inverse_frequency[None, :]  # (T, D/2)
  cos, sin = (jnp.tile(f(angles), (1, 2))[None, :, None, :] for f in (jnp.cos, jnp.sin))
  x32 = x.astype(jnp.float32)
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  return (x32 * cos + rotated * sin).astype(x.dtype)


class Mlp(nn.Module):
  """(N, C) -> (N, C). gelu (GPT-2's) and relu2: c_fc (C, F) -> act -> c_proj (F, C); swiglu:
  c_fc (C, 2, F) holds Llama's gate and up matrices ([:, 0] and [:, 1]), silu(gate) * up ->
  c_proj (F, C)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x, deterministic: bool):  # (N, C) -> (N, C)
    cfg = self.config
    width = cfg.mlp_width
    if cfg.mlp == "swiglu":
      h = Dense((cfg.n_embd,), (2, width), ("embed", None, "mlp"),
                cfg.bias,
                compute_dtype(cfg),
                name="c_fc")(x)  # (N, 2, F)
      h = jax.nn.silu(h[:, 0]) * h[:, 1]
    else:
      h = Dense((cfg.n_embd,), (width,), ("embed", "mlp"),
                cfg.bias,
                compute_dtype(cfg),
                name="c_fc")(x)
      h = jax.nn.gelu(h, approximate=True) if cfg.mlp == "gelu" else jnp.square(jax.nn.relu(h))
    h = nn.with_logical_constraint(h, ("batch", "mlp"))
    h = Dense((width,), (cfg.n_embd,), ("mlp", "embed"),
              cfg.bias,
              compute_dtype(cfg),
              std=INIT_STD / math.sqrt(2 * cfg.n_layer),
              name="c_proj")(h)
    return nn.Dropout(cfg.dropout)(h, deterministic=deterministic)
