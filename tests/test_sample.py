"""Sampling: the top-k / top-p / temperature filters, greedy decoding, long generations."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax.config import ModelConfig
from gptjax.model import GPT
from gptjax.sample import generate, sample_logits


def allowed_tokens(logits, **settings):
  """The set of tokens sample_logits can draw, found by drawing many times."""
  keys = jax.random.split(jax.random.key(0), 4000)
  draw = jax.vmap(lambda k: sample_logits(logits[None], k, **settings)[0])
  return set(np.asarray(draw(keys)).tolist())


def brute_force_allowed(logits, top_k, top_p, vocab_limit):
  """The tokens nucleus + top-k sampling keeps, by sorting in plain Python."""
  items = sorted(((float(l), i) for i, l in enumerate(logits[:vocab_limit])), reverse=True)
  if top_k:
    items = items[:top_k]
  probs = np.exp([l for l, _ in items] - np.max([l for l, _ in items]))
  probs /= probs.sum()
  kept, mass = [], 0.0
  for (_, i), p in zip(items, probs):
    if mass >= top_p:
      break
    kept.append(i)
    mass += p
  return set(kept)


LOGITS = jnp.log(jnp.array([0.30, 0.25, 0.20, 0.12, 0.08, 0.05, 0.0001, 0.0001]))


@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (3, 1.0), (0, 0.5), (0, 0.7), (4, 0.8),
                                          (2, 0.9), (0, 0.01)])
def test_filters_keep_exactly_the_brute_force_set(top_k, top_p):
  got = allowed_tokens(LOGITS, temperature=1.0, top_k=top_k, top_p=top_p, vocab_limit=6)
  assert got == brute_force_allowed(np.asarray(LOGITS), top_k, top_p, 6)


def test_padding_rows_are_never_drawn_even_when_most_likely():
  logits = jnp.array([0.0, 0.0, 10.0, 10.0])
  assert allowed_tokens(logits, temperature=1.0, top_k=0, top_p=1.0, vocab_limit=2) == {0, 1}
  assert int(sample_logits(logits[None], jax.random.key(0), temperature=0.0, top_k=0, top_p=1.0,
                           vocab_limit=2)[0]) in (0, 1)


def test_temperature_sharpens_the_distribution():
  keys = jax.random.split(jax.random.key(1), 4000)
  def frequency_of_best(temperature):
    draw = jax.vmap(lambda k: sample_logits(LOGITS[None], k, temperature=temperature, top_k=0,
                                            top_p=1.0, vocab_limit=8)[0])
    return float(np.mean(np.asarray(draw(keys)) == 0))
  assert frequency_of_best(0.3) > frequency_of_best(1.0) + 0.2
  np.testing.assert_allclose(frequency_of_best(1.0), 0.30, atol=0.03)


@pytest.fixture(scope="module")
def small_model():
  config = ModelConfig(vocab_size=64, block_size=12, n_layer=2, n_head=2, n_embd=16)
  model = GPT(config)
  params = nn.meta.unbox(model.init(jax.random.key(3), jnp.zeros((1, 12), jnp.int32))["params"])
  params = jax.tree.map(lambda x: x * 20, params)  # sharper logits: fewer near-ties in argmax
  return model, params


def test_greedy_generation_equals_a_full_forward_loop(small_model):
  model, params = small_model
  prompt = [5, 9, 2]
  got = generate(model, params, prompt, 9, rng=jax.random.key(0), temperature=0.0)
  tokens = list(prompt)
  for _ in range(9):  # nanoGPT's loop: the whole sequence through the model for every token
    logits = model.apply({"params": params}, jnp.asarray([tokens]))
    tokens.append(int(jnp.argmax(logits[0, -1])))
  assert got.tolist() == [tokens]


def test_long_generations_slide_past_block_size(small_model):
  model, params = small_model
  params = jax.tree.map(lambda x: x / 20, params)  # the initial scale: samples that differ
  prompt = list(range(20))  # longer than block_size: cropped to its last 12 tokens
  out = generate(model, params, prompt, 30, rng=jax.random.key(1), num_samples=3,
                 temperature=1.0, top_k=0, vocab_limit=50)
  assert out.shape == (3, 12 + 30)
  assert out[:, :12].tolist() == [prompt[-12:]] * 3
  assert out.max() < 50 and len({tuple(row) for row in out.tolist()}) == 3
