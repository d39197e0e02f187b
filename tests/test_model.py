"""The GPT module: KV-cache decoding equals the full forward pass; remat policies, scanned layers,
the chunked loss and dtype variants agree."""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax import step
from gptjax.config import REMAT_POLICIES, ModelConfig
from gptjax.model import GPT
from gptjax.generate import init_cache
from gptjax.params import to_layout

CONFIG = ModelConfig(vocab_size=97, block_size=16, n_layer=2, n_head=4, n_embd=32, bias=True)


@pytest.fixture(scope="module")
def model_and_params():
  model = GPT(CONFIG)
  params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))["params"])
  # Non-zero biases and norms, so that the test would see a bias or scale applied in the wrong place.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(
      tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  return model, params


def test_kv_cache_logits_equal_full_forward_at_every_position(model_and_params):
  model, params = model_and_params
  tokens = jax.random.randint(jax.random.key(2), (3, 16), 0, CONFIG.vocab_size)
  full = model.apply({"params": params}, tokens)  # (B, T, V)
  # Prefill 5 tokens at once, then feed one at a time: every position's logits must match.
  cache = init_cache(model, 3)
  logits, variables = model.apply({
      "params": params,
      "cache": cache
  },
                                  tokens[:, :5],
                                  decode=True,
                                  mutable=["cache"])
  pieces = [logits]
  for t in range(5, 16):
    logits, variables = model.apply({
        "params": params,
        "cache": variables["cache"]
    },
                                    tokens[:, t:t + 1],
                                    decode=True,
                                    mutable=["cache"])
    pieces.append(logits)
  cached = jnp.concatenate(pieces, axis=1)
  np.testing.assert_allclose(cached, full, atol=1e-5, rtol=1e-5)


def test_full_forward_is_causal(model_and_params):
  """Changing a later token never changes earlier logits (brute force over every position)."""
  model, params = model_and_params
  tokens = jax.random.randint(jax.random.key(3), (1, 16), 0, CONFIG.vocab_size)
  base = model.apply({"params": params}, tokens)
  for t in range(16):
    changed = tokens.at[0, t].set((tokens[0, t] + 1) % CONFIG.vocab_size)
    logits = model.apply({"params": params}, changed)
    np.testing.assert_allclose(logits[:, :t], base[:, :t], atol=1e-6)
    assert not np.allclose(logits[:, t], base[:, t])


def test_forward_equals_a_plain_numpy_gpt(model_and_params):
  """An independent NumPy implementation of GPT-2's forward pass, written from its definition."""
  model, params = model_and_params
  tokens = np.asarray(jax.random.randint(jax.random.key(4), (2, 16), 0, CONFIG.vocab_size))
  p = jax.tree.map(np.asarray, params)
  C, H = CONFIG.n_embd, CONFIG.n_head

  def layer_norm(x, ln):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * ln["scale"] + ln["bias"]

  def gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

  x = p["wte"][tokens] + p["wpe"][:16]
  for i in range(CONFIG.n_layer):
    block = p[f"h_{i}"]
    attn = block["attn"]
    qkv = layer_norm(x, block["ln_1"]) @ attn["c_attn"]["kernel"].reshape(C, 3 * C)
    qkv = qkv + attn["c_attn"]["bias"].reshape(3 * C)
    q, k, v = np.split(qkv, 3, axis=-1)
    heads = lambda a: a.reshape(2, 16, H, C // H).transpose(0, 2, 1, 3)
    scores = heads(q) @ heads(k).transpose(0, 1, 3, 2) / np.sqrt(C // H)
    scores = np.where(np.tril(np.ones((16, 16), bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    y = (weights @ heads(v)).transpose(0, 2, 1, 3).reshape(2, 16, C)
    x = x + y @ attn["c_proj"]["kernel"].reshape(C, C) + attn["c_proj"]["bias"]
    mlp = block["mlp"]
    h = gelu(layer_norm(x, block["ln_2"]) @ mlp["c_fc"]["kernel"] + mlp["c_fc"]["bias"])
    x = x + h @ mlp["c_proj"]["kernel"] + mlp["c_proj"]["bias"]
  expected = layer_norm(x, p["ln_f"]) @ p["wte"].T
  np.testing.assert_allclose(model.apply({"params": params}, tokens),
                             expected,
                             atol=2e-5,
                             rtol=1e-4)


@functools.partial(jax.jit, static_argnums=0)
@functools.partial(jax.value_and_grad, argnums=1)
def mean_logit_and_grads(model, params, tokens):
  return model.apply({"params": params}, tokens).mean()


@pytest.mark.parametrize("policy", [p for p in REMAT_POLICIES if p != "none"])
def test_every_remat_policy_gives_the_same_loss_and_gradients(model_and_params, policy):
  _, params = model_and_params
  tokens = jax.random.randint(jax.random.key(5), (2, 16), 0, CONFIG.vocab_size)
  plain = mean_logit_and_grads(GPT(CONFIG), params, tokens)
  remat = mean_logit_and_grads(GPT(dataclasses.replace(CONFIG, remat=policy)), params, tokens)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), plain, remat)


@pytest.mark.parametrize("remat", ["none", "full"])
def test_scanned_layers_equal_the_unrolled_ones(model_and_params, remat):
  """nn.scan over one block with the parameters stacked: the same logits and gradients (float32),
  and to_layout converts exactly between the two layouts."""
  model, params = model_and_params
  scanned = GPT(dataclasses.replace(CONFIG, scan_layers=True, remat=remat))
  stacked = to_layout(params, scan_layers=True)
  shapes = jax.eval_shape(scanned.init, jax.random.key(0), jnp.zeros((1, 16), jnp.int32))
  assert jax.tree.map(lambda a: a.shape,
                      nn.meta.unbox(shapes["params"])) == jax.tree.map(lambda a: a.shape, stacked)
  assert stacked["h"]["attn"]["c_attn"]["kernel"].shape == (2, 32, 3, 4, 8)
  jax.tree.map(np.testing.assert_array_equal, to_layout(stacked, scan_layers=False), params)
  tokens = jax.random.randint(jax.random.key(7), (2, 16), 0, CONFIG.vocab_size)
  plain = mean_logit_and_grads(model, params, tokens)
  value, grads = mean_logit_and_grads(scanned, stacked, tokens)
  np.testing.assert_allclose(value, plain[0], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), plain[1],
               to_layout(grads, scan_layers=False))


def test_chunked_loss_equals_the_plain_loss(model_and_params):
  """loss_chunk_tokens: the loss and its gradients within 1e-6 (float32) of the loss over the
  whole (N, V) logits, with a chunk that does not divide the 2 x 16 tokens (a padded last chunk)."""
  _, params = model_and_params
  windows = jax.random.randint(jax.random.key(8), (2, 17), 0, CONFIG.vocab_size)
  grad = lambda config: jax.jit(jax.value_and_grad(step.loss_fn), static_argnums=1)(
      params, GPT(config), windows)
  plain = grad(CONFIG)
  for chunk in (32, 12):
    chunked = grad(dataclasses.replace(CONFIG, loss_chunk_tokens=chunk))
    np.testing.assert_allclose(chunked[0], plain[0], rtol=0, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6), chunked[1],
                 plain[1])


def test_bfloat16_compute_keeps_float32_params_and_tracks_float32(model_and_params):
  _, params = model_and_params
  tokens = jax.random.randint(jax.random.key(6), (2, 16), 0, CONFIG.vocab_size)
  model16 = GPT(dataclasses.replace(CONFIG, dtype="bfloat16"))
  shapes = jax.eval_shape(model16.init, jax.random.key(0), tokens)["params"]
  assert {leaf.dtype for leaf in jax.tree.leaves(nn.meta.unbox(shapes))} == {jnp.dtype("float32")}
  logits16 = model16.apply({"params": params}, tokens)
  logits32 = GPT(CONFIG).apply({"params": params}, tokens)
  assert logits16.dtype == jnp.float32
  np.testing.assert_allclose(logits16, logits32, atol=0.1)


def test_every_parameter_has_logical_axis_names():
  boxed = GPT(CONFIG).init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))["params"]
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(leaf, nn.Partitioned) for leaf in leaves)
  for leaf in leaves:
    assert len(leaf.names) == leaf.value.ndim
