"""The GPT: nanoGPT's GPT-2 architecture as a flax.linen module, with a KV-cache decode path.

Shapes, everywhere in gptjax:
  B batch, T time (sequence), C channels (n_embd), H heads, D head dim (C // H), V vocab, N = B*T.

Parameter names follow GPT-2 (`wte`, `wpe`, `h_{i}/ln_1`, `attn/c_attn`, `attn/c_proj`, `ln_2`,
`mlp/c_fc`, `mlp/c_proj`, `ln_f`) so weights map one to one onto GPT-2 checkpoints; the output head
is tied to `wte`. Attention kernels keep their head structure: `c_attn` is (C, 3, H, D) and the
attention `c_proj` is (H, D, C), which is GPT-2's (C, 3C) and (C, C) reshaped, so that tensor
parallelism can split whole heads. Every parameter carries logical axis names (batch, length, embed,
heads, kv, mlp, vocab) that gptjax/sharding.py maps onto the device mesh.

The residual stream is kept flat, (N, C): on CPU a dense layer over a flat 2-D array is a plain
matmul, while one over (B, T, C) makes XLA contract two dimensions at once in the weight gradient,
a much slower path (docs/performance.md, "Facts behind the code").
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from gptjax.attention import ATTN_OUT, fused_attention
from gptjax.config import ModelConfig

INIT_STD = 0.02  # GPT-2's initialiser; residual projections are scaled by 1/sqrt(2 * n_layer)


def _dtype(config: ModelConfig):
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


def _layer_norm(config: ModelConfig, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-5,
                      use_bias=config.bias,
                      dtype=_dtype(config),
                      param_dtype=jnp.float32,
                      name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))


def _remat_policy(name: str):
  """The jax.checkpoint policy of a REMAT_POLICIES name (not "none": no remat at all)."""
  policies = jax.checkpoint_policies
  attn_out = policies.save_only_these_names(ATTN_OUT)
  return {
      "full":
          policies.nothing_saveable,
      "dots":
          policies.dots_saveable,
      "dots_no_batch":
          policies.dots_with_no_batch_dims_saveable,
      "save_attn_out":
          attn_out,
      "dots_no_batch+attn_out":
          policies.save_from_both_policies(policies.dots_with_no_batch_dims_saveable, attn_out),
  }[name]


class CausalSelfAttention(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x, batch_size: int, deterministic: bool, decode: bool = False, start=0):
    """x: (N, C) -> (N, C). In decode mode, keys/values are appended to the cache at `start`."""
    cfg = self.config
    B, T, H, D = batch_size, x.shape[0] // batch_size, cfg.n_head, cfg.head_dim
    dtype = _dtype(cfg)
    qkv = Dense((cfg.n_embd,), (3, H, D), ("embed", None, "heads", "kv"),
                cfg.bias,
                dtype,
                name="c_attn")(x)  # (N, 3, H, D)
    qkv = nn.with_logical_constraint(qkv.reshape(B, T, 3, H, D),
                                     ("batch", "length", None, "heads", "kv"))
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, T, H, D)

    query_pos = jnp.arange(T)
    if decode:
      k, v, query_pos = self._update_cache(k, v, start)  # k, v: (B, block, H, D)
    # init only makes the parameters: the einsum there, whatever the batch and the mesh
    if decode or cfg.attention in ("auto", "xla") or self.is_initializing():
      y = self._attend(q, k, v, query_pos, deterministic)
    else:
      y = fused_attention(q, k, v, cfg)  # no attention-weight dropout in fused kernels
    y = checkpoint_name(y, ATTN_OUT)  # what the remat policies "*attn_out" keep
    y = Dense((H, D), (cfg.n_embd,), ("heads", "kv", "embed"),
              cfg.bias,
              dtype,
              std=INIT_STD / math.sqrt(2 * cfg.n_layer),
              name="c_proj")(y.reshape(B * T, H, D))
    return nn.Dropout(cfg.dropout)(y, deterministic=deterministic)

  def _attend(self, q, k, v, query_pos, deterministic):
    """Einsum attention with an explicit causal mask: on CPU faster than the fused op, and for a
    single query (a decode step) faster than multiply-and-sum over the cache (docs/performance.md).
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    att = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * scale  # (B, H, T, T_k)
    causal = jnp.arange(k.shape[1])[None, :] <= query_pos[:, None]  # (T, T_k)
    att = jnp.where(causal, att, jnp.finfo(jnp.float32).min)
    att = jax.nn.softmax(att, axis=-1).astype(q.dtype)
    att = nn.Dropout(self.config.dropout)(att, deterministic=deterministic)
    return jnp.einsum("bhqk,bkhd->bqhd", att, v)  # (B, T, H, D)

  def _update_cache(self, k, v, start):
    cfg = self.config
    B, T, H, D = k.shape
    initialised = self.has_variable("cache", "cached_key")
    cache_shape = (B, cfg.block_size, H, D)
    cached_key = self.variable("cache", "cached_key", jnp.zeros, cache_shape, k.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, cache_shape, v.dtype)
    if initialised:  # On the init call only the cache's shapes are being made.
      cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, k, (0, start, 0, 0))
      cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, v, (0, start, 0, 0))
    return cached_key.value, cached_value.value, start + jnp.arange(T)


class Mlp(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x, deterministic: bool):  # (N, C) -> (N, C)
    cfg = self.config
    h = Dense((cfg.n_embd,), (4 * cfg.n_embd,), ("embed", "mlp"),
              cfg.bias,
              _dtype(cfg),
              name="c_fc")(x)
    h = nn.with_logical_constraint(jax.nn.gelu(h, approximate=True), ("batch", "mlp"))
    h = Dense((4 * cfg.n_embd,), (cfg.n_embd,), ("mlp", "embed"),
              cfg.bias,
              _dtype(cfg),
              std=INIT_STD / math.sqrt(2 * cfg.n_layer),
              name="c_proj")(h)
    return nn.Dropout(cfg.dropout)(h, deterministic=deterministic)


class Block(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x, batch_size: int, deterministic: bool, decode: bool = False, start=0):
    x = x + CausalSelfAttention(self.config, name="attn")(_layer_norm(self.config, "ln_1")(x),
                                                          batch_size, deterministic, decode, start)
    x = x + Mlp(self.config, name="mlp")(_layer_norm(self.config, "ln_2")(x), deterministic)
    return nn.with_logical_constraint(x, ("batch", "embed"))


class GPT(nn.Module):
  """GPT-2 style decoder. `__call__(tokens (B, T) int) -> logits (B, T, V) float32`.

  decode=True runs the KV-cache path: the mutable "cache" collection holds each layer's keys and
  values and the next position; feed the prompt once, then one token at a time (unrolled models
  only: `generate` unstacks a scanned one). `logits_at` (an int or a traced scalar) keeps only that
  time step's logits, (B, 1, V): a prefill needs just the last prompt position's, and the head over
  every position is, at GPT-2's vocab, as costly as a layer. hidden=True returns what the head
  would take instead of logits: (the final LayerNorm's output (N, C), the tied head's wte (V, C)),
  for a loss that computes the logits in chunks (gptjax/losses.py).

  With scan_layers the blocks are one nn.scan over a single block named "h", each parameter
  stacked on a leading "layers" axis (gptjax/params.py converts between the layouts).
  """
  config: ModelConfig

  @nn.compact
  def __call__(self,
               tokens,
               deterministic: bool = True,
               decode: bool = False,
               logits_at=None,
               hidden: bool = False):
    cfg = self.config
    B, T = tokens.shape
    wte = self.param(
        "wte", nn.with_logical_partitioning(nn.initializers.normal(INIT_STD), ("vocab", "embed")),
        (cfg.vocab_size, cfg.n_embd), jnp.float32)
    wpe = self.param(
        "wpe", nn.with_logical_partitioning(nn.initializers.normal(INIT_STD), ("length", "embed")),
        (cfg.block_size, cfg.n_embd), jnp.float32)
    start = 0
    if decode:
      if cfg.scan_layers:
        raise ValueError("decode with an unrolled model: generate.unrolled(model, params)")
      initialised = self.has_variable("cache", "position")
      position = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
      start = position.value
      if initialised:
        position.value = start + T
    positions = start + jnp.arange(T)
    x = jnp.take(wte, tokens.reshape(-1), axis=0) + jnp.tile(jnp.take(wpe, positions, axis=0),
                                                             (B, 1))  # (N, C)
    x = nn.Dropout(cfg.dropout)(x.astype(_dtype(cfg)), deterministic=deterministic)
    x = nn.with_logical_constraint(x, ("batch", "embed"))
    block = Block
    if cfg.remat != "none":  # under scan, CSE across iterations cannot undo the recompute
      block = nn.remat(Block,
                       static_argnums=(2, 3, 4),
                       policy=_remat_policy(cfg.remat),
                       prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      layer = lambda module, x, _: (module(x, B, deterministic, False, 0), None)
      layers = nn.scan(layer,
                       variable_axes={"params": 0},
                       split_rngs={
                           "params": True,
                           "dropout": True
                       },
                       length=cfg.n_layer,
                       metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = layers(block(cfg, name="h"), x, None)
    for i in range(0 if cfg.scan_layers else cfg.n_layer):
      x = block(cfg, name=f"h_{i}")(x, B, deterministic, decode, start)
    if logits_at is not None:
      x = jax.lax.dynamic_index_in_dim(x.reshape(B, T, -1), logits_at, axis=1, keepdims=False)
      T = 1  # x: (B, C)
    x = _layer_norm(cfg, "ln_f")(x)
    if hidden:
      return x, wte
    logits = jnp.einsum("nc,vc->nv", x, wte.astype(x.dtype))  # tied head, (N, V)
    logits = nn.with_logical_constraint(logits, ("batch", "vocab"))
    return logits.astype(jnp.float32).reshape(B, T, cfg.vocab_size)
