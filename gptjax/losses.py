"""Next-token cross-entropy through the tied head in chunks of tokens, never holding all the logits.

  loss = chunked_cross_entropy(x, wte, labels, chunk)   # == the mean CE of the logits x @ wte.T
  loss, z = chunked_cross_entropy_and_z(x, wte, labels, chunk)  # and mean(logsumexp^2): z-loss

x (N, C) are the final LayerNorm's outputs, wte (V, C) the tied embedding in x's dtype, labels
(N,) ints. A jax.custom_vjp: the forward scans over chunks of `chunk` tokens, computing each chunk's
(chunk, V) float32 logits, their logsumexp and the label's logit, and keeps only the (N,)
logsumexps; the backward scans again, recomputes each chunk's logits, forms softmax - onehot and
accumulates dx (the chunk's rows) and dW (float32, (V, C)). The peak is one chunk's logits and
probabilities instead of (N, V) float32 logits and their gradient; the price is the recomputed
forward matmul: 8NVC FLOPs instead of 6NVC.

With a soft-cap (logit_softcap) the logits are cap * tanh(x @ w.T / cap), the backward scaling
the logits' gradient by the tanh's derivative, 1 - (logits / cap)^2.

The matmuls accumulate in float32 (preferred_element_type), also for bfloat16 inputs, where the
plain head rounds its logits to bfloat16 first: in bfloat16 the two differ by that rounding.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def chunked_cross_entropy(x, w, labels, chunk: int, softcap: float = 0.0):
  """Mean cross-entropy of the logits x @ w.T against integer `labels`, `chunk` tokens at a time.

  N need not divide by `chunk`: the last chunk is padded with rows whose label -1 counts nothing.
  """
  return chunked_cross_entropy_and_z(x, w, labels, chunk, softcap)[0]


def chunked_cross_entropy_and_z(x, w, labels, chunk: int, softcap: float = 0.0):
  """(mean cross-entropy, mean logsumexp(logits)^2) of the logits x @ w.T, `chunk` tokens at a time:
  the second is PaLM's z-loss term (step.objective), from the logsumexps the loss computes anyway.
  Its gradient costs nothing extra: the backward scales each row's softmax once for both. With
  `softcap` > 0 the logits are softcap * tanh(x @ w.T / softcap)."""
  n = x.shape[0]
  chunk = min(chunk, n)
  pad = (-n) % chunk
  if pad:
    x = jnp.pad(x, ((0, pad), (0, 0)))
    labels = jnp.pad(labels, (0, pad), constant_values=-1)
  cross_entropy, z_term = _chunked_sum(x, w, labels.astype(jnp.int32), chunk, float(softcap))
  return cross_entropy / n, z_term / n


def _logits(x_chunk, w, softcap: float):
  logits = jax.lax.dot_general(x_chunk,
                               w, (((1,), (1,)), ((), ())),
                               preferred_element_type=jnp.float32)  # (chunk, V) float32
  return softcap * jnp.tanh(logits / softcap) if softcap else logits


def _chunks(a, chunk: int):
  return a.reshape(a.shape[0] // chunk, chunk, *a.shape[1:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _chunked_sum(x, w, labels, chunk: int, softcap: float):
  """(the sum over tokens of -log softmax(logits)[label], the sum of logsumexp(logits)^2);
  labels < 0 count nothing."""
  return _forward(x, w, labels, chunk, softcap)[0]


def _forward(x, w, labels, chunk: int, softcap: float):

  def body(totals, xs):
    x_chunk, label = xs
    logits = _logits(x_chunk, w, softcap)
    lse = jax.nn.logsumexp(logits, axis=-1)  # (chunk,)
    picked = jnp.take_along_axis(logits, jnp.maximum(label, 0)[:, None], axis=-1)[:, 0]
    counted = label >= 0
    return (totals[0] + jnp.sum(jnp.where(counted, lse - picked, 0.0)),
            totals[1] + jnp.sum(jnp.where(counted, jnp.square(lse), 0.0))), lse

  zero = jnp.zeros((), jnp.float32)
  totals, lse = jax.lax.scan(body, (zero, zero), (_chunks(x, chunk), _chunks(labels, chunk)))
  return totals, lse.reshape(-1)


def _fwd(x, w, labels, chunk: int, softcap: float):
  totals, lse = _forward(x, w, labels, chunk, softcap)
  return totals, (x, w, labels, lse)


def _bwd(chunk: int, softcap: float, residuals, g):
  x, w, labels, lse = residuals
  g_loss, g_z = g  # d(lse^2)/d(logits) = 2 lse softmax: both terms scale the softmax

  def body(dw, xs):
    x_chunk, label, lse_chunk = xs
    logits = _logits(x_chunk, w, softcap)
    p = jnp.exp(logits - lse_chunk[:, None])  # softmax, (chunk, V)
    p = p * (g_loss + 2.0 * g_z * lse_chunk)[:, None]
    p = p - g_loss * jax.nn.one_hot(jnp.maximum(label, 0), w.shape[0], dtype=p.dtype)
    p = jnp.where((label >= 0)[:, None], p, 0.0)
    if softcap:  # through the cap: d(cap tanh(u / cap))/du = 1 - (logits / cap)^2
      p = p * (1.0 - jnp.square(logits / softcap))
    dx = jax.lax.dot_general(p.astype(w.dtype),
                             w, (((1,), (0,)), ((), ())),
                             preferred_element_type=jnp.float32)  # (chunk, C)
    dw = dw + jax.lax.dot_general(p.astype(x_chunk.dtype),
                                  x_chunk, (((0,), (0,)), ((), ())),
                                  preferred_element_type=jnp.float32)  # (V, C)
    return dw, dx.astype(x.dtype)

  dw, dx = jax.lax.scan(body, jnp.zeros(w.shape, jnp.float32),
                        (_chunks(x, chunk), _chunks(labels, chunk), _chunks(lse, chunk)))
  return dx.reshape(x.shape), dw.astype(w.dtype), None


_chunked_sum.defvjp(_fwd, _bwd)
