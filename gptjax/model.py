"""The GPT: nanoGPT's GPT-2 architecture as a flax.linen module, with a KV-cache decode path.

Shapes, everywhere in gptjax:
  B batch, T time (sequence), C channels (n_embd), H heads, D head dim (C // H), V vocab, N = B*T.

Parameter names follow GPT-2 (`wte`, `wpe`, `h_{i}/ln_1`, `attn/c_attn`, `attn/c_proj`, `ln_2`,
`mlp/c_fc`, `mlp/c_proj`, `ln_f`) so weights map one to one onto GPT-2 checkpoints; the output head
is tied to `wte`. The architecture options (gptjax/model_config.py; norms, MLPs and RoPE in
gptjax/layers.py) change only what they name: rope drops `wpe`; grouped-query attention
(n_kv_head < n_head) replaces `c_attn` by `c_q` (C, H, D) and `c_kv` (C, 2, H_kv, D); qk_norm adds
`attn/q_norm` and `attn/k_norm`; swiglu's `c_fc` is (C, 2, F); an untied head is `lm_head` (C, V). Attention kernels keep their head structure: `c_attn` is (C, 3, H, D) and the
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
from gptjax.layers import INIT_STD, Dense, Head, Mlp, head_norm, norm, rope
from gptjax.layers import compute_dtype as _dtype


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
    if cfg.grouped:
      q, k, v = self._grouped_qkv(x, B, T)
    else:  # GPT-2's c_attn, kept as it is: checkpoints, GPT-2's weights, sharding rely on it
      qkv = Dense((cfg.n_embd,), (3, H, D), ("embed", None, "heads", "kv"),
                  cfg.bias,
                  dtype,
                  name="c_attn")(x)  # (N, 3, H, D)
      qkv = nn.with_logical_constraint(qkv.reshape(B, T, 3, H, D),
                                       ("batch", "length", None, "heads", "kv"))
      q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, T, H, D)
    if cfg.qk_norm:
      q, k = head_norm(cfg, "q_norm")(q), head_norm(cfg, "k_norm")(k)
    if cfg.positions == "rope":  # k is cached turned to its absolute position
      positions = start + jnp.arange(T)
      q, k = rope(q, positions, cfg.rope_base), rope(k, positions, cfg.rope_base)

    query_pos = jnp.arange(T)
    if decode:
      k, v, query_pos = self._update_cache(k, v, start)  # k, v: (B, block, H_kv, D)
    if cfg.grouped:  # each key/value head serves H / H_kv query heads in a row (Llama's repeat_kv)
      k, v = (jnp.repeat(a, H // cfg.kv_heads, axis=2) for a in (k, v))
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

  def _grouped_qkv(self, x, B, T):
    """q (B, T, H, D) from c_q (C, H, D), k and v (B, T, H_kv, D) from c_kv (C, 2, H_kv, D)."""
    cfg = self.config
    H, D, kv_heads = cfg.n_head, cfg.head_dim, cfg.kv_heads
    q = Dense((cfg.n_embd,), (H, D), ("embed", "heads", "kv"), cfg.bias, _dtype(cfg), name="c_q")(x)
    q = nn.with_logical_constraint(q.reshape(B, T, H, D), ("batch", "length", "heads", "kv"))
    kv = Dense((cfg.n_embd,), (2, kv_heads, D), ("embed", None, "heads", "kv"),
               cfg.bias,
               _dtype(cfg),
               name="c_kv")(x)  # (N, 2, H_kv, D)
    kv = nn.with_logical_constraint(kv.reshape(B, T, 2, kv_heads, D),
                                    ("batch", "length", None, "heads", "kv"))
    return q, kv[:, :, 0], kv[:, :, 1]

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


class Block(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x, batch_size: int, deterministic: bool, decode: bool = False, start=0):
    x = x + CausalSelfAttention(self.config, name="attn")(norm(self.config, "ln_1")(x), batch_size,
                                                          deterministic, decode, start)
    x = x + Mlp(self.config, name="mlp")(norm(self.config, "ln_2")(x), deterministic)
    return nn.with_logical_constraint(x, ("batch", "embed"))


class GPT(nn.Module):
  """GPT-2 style decoder. `__call__(tokens (B, T) int) -> logits (B, T, V) float32`.

  decode=True runs the KV-cache path: the mutable "cache" collection holds each layer's keys and
  values and the next position; feed the prompt once, then one token at a time (unrolled models
  only: `generate` unstacks a scanned one). `logits_at` (an int or a traced scalar) keeps only that
  time step's logits, (B, 1, V): a prefill needs just the last prompt position's, and the head over
  every position is, at GPT-2's vocab, as costly as a layer. hidden=True returns what the head
  would take instead of logits: (the final norm's output (N, C), the head's weights (V, C): wte, or
  lm_head transposed), for a loss that computes the logits in chunks (gptjax/losses.py), which
  applies logit_softcap itself.

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
    wpe = None  # with RoPE, q and k are turned in each block instead
    if cfg.positions == "learned":
      wpe = self.param(
          "wpe", nn.with_logical_partitioning(nn.initializers.normal(INIT_STD),
                                              ("length", "embed")), (cfg.block_size, cfg.n_embd),
          jnp.float32)
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
    x = jnp.take(wte, tokens.reshape(-1), axis=0)  # (N, C)
    if wpe is not None:
      x = x + jnp.tile(jnp.take(wpe, positions, axis=0), (B, 1))
    x = nn.Dropout(cfg.dropout)(x.astype(_dtype(cfg)), deterministic=deterministic)
    x = nn.with_logical_constraint(x, ("batch", "embed"))
    block = Block
    if cfg.remat not in ("none", "auto"):  # under scan, CSE cannot undo the recompute
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
    x = norm(cfg, "ln_f")(x)
    head = None if cfg.tie_embeddings else Head(cfg, name="lm_head")()  # (C, V)
    if hidden:
      return x, wte if head is None else head.T
    if head is None:
      logits = jnp.einsum("nc,vc->nv", x, wte.astype(x.dtype))  # tied head, (N, V)
    else:
      logits = jnp.einsum("nc,cv->nv", x, head.astype(x.dtype))
    logits = nn.with_logical_constraint(logits, ("batch", "vocab"))
    logits = logits.astype(jnp.float32)
    if cfg.logit_softcap:
      logits = cfg.logit_softcap * jnp.tanh(logits / cfg.logit_softcap)
    return logits.reshape(B, T, cfg.vocab_size)
