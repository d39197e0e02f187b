"""The optimizer, all optax: linear warmup + cosine decay, AdamW with a weight-decay mask, clipping.

Gradient accumulation lives in the train step (gptjax/step.py), which averages the gradients of
`grad_accum_steps` micro-batches before one update, so k micro-batches of b give the update of one
batch of k*b.
"""

from __future__ import annotations

import jax
import ml_collections
import optax

DECAYED_LEAVES = ("kernel", "wte", "wpe")  # weight matrices and embeddings; never biases or norms


def lr_decay_iters(config: ml_collections.ConfigDict) -> int:
  return config.max_iters if config.lr_decay_iters == -1 else config.lr_decay_iters


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """nanoGPT's schedule: lr*(step+1)/(warmup+1) while warming up, cosine to min_lr, then min_lr."""
  return optax.warmup_cosine_decay_schedule(
      init_value=config.learning_rate / (config.warmup_iters + 1),
      peak_value=config.learning_rate,
      warmup_steps=config.warmup_iters,
      decay_steps=max(lr_decay_iters(config), config.warmup_iters + 1),
      end_value=config.min_lr)


def weight_decay_mask(params):
  """True for the leaves AdamW decays: kernels and embeddings (nanoGPT: every 2-D+ weight)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) in DECAYED_LEAVES, params)


# optax.apply_if_finite applies a non-finite update after this many in a row; gptjax stops itself at
# config.skip_nonfinite_updates (training.metrics.Recorder), long before.
NEVER = 2**31 - 1


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """clip(global norm) -> AdamW(schedule, betas, masked decoupled weight decay); with
  skip_nonfinite_updates, inside optax.apply_if_finite, which skips (zero update, state kept) an
  update whose gradients hold a NaN or an infinity. Its skipped updates do not advance AdamW's
  count, so the schedule lags the logged lr by the number skipped."""
  adamw = optax.adamw(learning_rate_schedule(config),
                      b1=config.beta1,
                      b2=config.beta2,
                      eps=1e-8,
                      weight_decay=config.weight_decay,
                      mask=weight_decay_mask)
  # identity() when clipping is off keeps the state's structure, so a run can resume either way.
  clip = optax.clip_by_global_norm(config.grad_clip) if config.grad_clip > 0 else optax.identity()
  chain = optax.chain(clip, adamw)
  if config.skip_nonfinite_updates:
    return optax.apply_if_finite(chain, max_consecutive_errors=NEVER)
  return chain
