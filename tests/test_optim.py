"""The optax optimizer: nanoGPT's schedule, the weight-decay mask, gradient accumulation."""

from __future__ import annotations

import math

import jax
import numpy as np

from gptjax import sharding
from gptjax.optim import learning_rate_schedule, weight_decay_mask
from gptjax.step import build, global_batch, mesh_context


def nanogpt_lr(it, learning_rate, min_lr, warmup_iters, lr_decay_iters):
  """nanoGPT train.py's get_lr, copied in spirit line by line."""
  if it < warmup_iters:
    return learning_rate * (it + 1) / (warmup_iters + 1)
  if it > lr_decay_iters:
    return min_lr
  decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
  coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
  return min_lr + coeff * (learning_rate - min_lr)


def test_schedule_matches_nanogpt(tiny):
  config = tiny(learning_rate=1e-3,
                min_lr=1e-4,
                warmup_iters=100,
                max_iters=2000,
                lr_decay_iters=2000)
  schedule = learning_rate_schedule(config)
  for it in [0, 1, 50, 99, 100, 101, 500, 1000, 1999, 2000, 2500]:
    np.testing.assert_allclose(float(schedule(it)),
                               nanogpt_lr(it, 1e-3, 1e-4, 100, 2000),
                               rtol=1e-5)


def test_weight_decay_applies_to_weights_not_biases_or_norms():
  params = {
      "wte": 1,
      "wpe": 1,
      "h_0": {
          "attn": {
              "c_attn": {
                  "kernel": 1,
                  "bias": 1
              }
          },
          "ln_1": {
              "scale": 1,
              "bias": 1
          }
      },
      "ln_f": {
          "scale": 1
      }
  }
  mask = weight_decay_mask(params)
  assert mask == {
      "wte": True,
      "wpe": True,
      "h_0": {
          "attn": {
              "c_attn": {
                  "kernel": True,
                  "bias": False
              }
          },
          "ln_1": {
              "scale": False,
              "bias": False
          }
      },
      "ln_f": {
          "scale": False
      }
  }


def one_update(config, windows):
  mesh = sharding.make_mesh(config, jax.devices()[:1])
  setup = build(config, mesh)
  with mesh_context(mesh):
    state = setup.init(jax.random.key(0))
    state, metrics = setup.train_step(state, global_batch(windows, mesh, windows.shape[1]))
  return jax.device_get(state.params), float(metrics["loss"])


def test_grad_accumulation_equals_one_big_batch(tiny):
  windows = np.random.default_rng(0).integers(0, 256, size=(1, 8, 17)).astype(np.int32)
  big_params, big_loss = one_update(tiny(batch_size=8, grad_accum_steps=1), windows)
  acc_params, acc_loss = one_update(tiny(batch_size=4, grad_accum_steps=2),
                                    windows.reshape(2, 4, 17))
  np.testing.assert_allclose(acc_loss, big_loss, rtol=1e-6)
  # Adam divides by sqrt(v): where a gradient is ~0 float rounding shows at ~1e-7 absolute,
  # against first updates of ~lr / (warmup + 1) = 1e-3.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), acc_params,
               big_params)
  # ... and the update is real: accumulating over the two halves differs from either half alone.
  half_params, _ = one_update(tiny(batch_size=4), windows[:, :4])
  assert not np.allclose(half_params["wte"], big_params["wte"])
