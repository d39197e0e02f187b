"""Evaluation: the fixed batches every evaluation uses, their losses and val bits per byte, and the
exact loss of a whole split (gptjax.eval, tools/bench_nanogpt.py, and training with eval_iters=0)."""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.data import batches
from gptjax.data import tokenizer as tokenizer_lib
from gptjax.errors import UserError
from gptjax.model import GPT
from gptjax.step import Setup, TrainState, global_batch, loss_fn

EVAL_SPLITS = ("train", "val")


def eval_windows(config, token_data, mesh: jax.sharding.Mesh, rows: slice) -> jax.Array:
  """The fixed evaluation batches of both splits, as one global array (2 * eval_iters, B, T+1)."""
  windows = [
      batches.eval_batch(token_data.split(split), config.seed, i, config.batch_size,
                         config.block_size, rows)
      for split in EVAL_SPLITS
      for i in range(config.eval_iters)
  ]
  return global_batch(np.concatenate(windows), mesh, config.batch_size)


def estimate_loss(setup: Setup, params, windows: jax.Array) -> dict[str, float]:
  """Mean loss of each split over its eval_iters batches (`windows` from eval_windows)."""
  losses = np.asarray(jax.device_get(setup.eval_step(params, windows)))
  return {
      split: float(mean) for split, mean in zip(EVAL_SPLITS,
                                               losses.reshape(len(EVAL_SPLITS), -1).mean(axis=1))
  }


def bits_per_byte(loss: float, tokens_per_byte: float | None) -> float | None:
  """A loss in nats per token as bits per byte of the text: comparable across tokenizers."""
  return None if tokens_per_byte is None else loss / math.log(2) * tokens_per_byte


def evaluate(setup: Setup,
             state: TrainState,
             windows: jax.Array | None,
             val_tokens_per_byte: float | None = None,
             whole_val: "WholeSplit | None" = None) -> dict[str, float]:
  """The eval_iters estimate of both splits' losses, and val bits per byte (with the val split's
  tokens per byte of text, tokenizer.val_tokens_per_byte); with `whole_val` (eval_iters=0) the
  whole validation split's exact loss and bits per byte instead, and no train estimate."""
  start = time.perf_counter()
  if whole_val is not None:
    exact = whole_val(state.params)
    return dict(val_loss=exact["loss"], val_bpb=exact["bpb"], eval_s=time.perf_counter() - start)
  losses = estimate_loss(setup, state.params, windows)
  return dict(val_loss=losses["val"],
              val_bpb=bits_per_byte(losses["val"], val_tokens_per_byte),
              eval_train_loss=losses["train"],
              eval_s=time.perf_counter() - start)


class WholeSplit:
  """The exact loss and bits per byte of a whole split, for a run's every evaluation
  (eval_iters=0): its windows and the bytes of text they predict are cut and counted once, and the
  loss of a batch of windows compiles once per shape (two: full batches and the last)."""

  def __init__(self, model: GPT, tokens: np.ndarray, tokenizer, batch_size: int = 128):
    if jax.process_count() > 1:
      raise UserError(
          "eval_iters=0 (the whole validation split) runs in one process; this "
          f"training has {jax.process_count()}. Fix: --config.eval_iters=100 (sampled "
          "batches), and `python -m gptjax.eval --run_dir=RUN` on the whole split after "
          "training.")
    self.model, self.tokens, self.batch_size = model, np.asarray(tokens), batch_size
    T = model.config.block_size
    self.count = (len(self.tokens) - 1) // T
    if self.count == 0:
      raise UserError(f"eval_iters=0: the validation split has {len(self.tokens)} tokens, less "
                      f"than one window of block_size + 1 = {T + 1}. Fix: more text, a smaller "
                      f"--config.train_split (val is the rest), or --config.eval_iters=100.")
    self.bytes = tokenizer_lib.text_bytes(tokenizer, self.tokens[1:1 + self.count * T])

  def __call__(self, params) -> dict[str, float | None]:
    loss, predicted = split_loss(self.model, params, self.tokens, self.batch_size)
    return dict(loss=loss, bpb=bits_per_byte(loss, predicted / self.bytes if self.bytes else None))


def split_loss(model: GPT, params, tokens: np.ndarray, batch_size: int = 128) -> tuple[float, int]:
  """The exact mean next-token loss over a whole split, and the number of tokens it predicts.

  The split is cut into consecutive windows of block_size + 1 tokens overlapping by one, so every
  token after the first is predicted once, with 0 to block_size - 1 tokens of context, as in
  training. No sampling: unlike the eval_iters estimate, two runs of it on one model agree exactly.
  The split's last (len(tokens) - 1) mod block_size tokens, less than one window, are not predicted
  (51 of tiny Shakespeare's 111,539 val targets at block 64); the count returned says how many are.
  """
  T = model.config.block_size
  n = (len(tokens) - 1) // T
  windows = batches.windows(np.asarray(tokens), np.arange(n) * T, T + 1)
  total = sum(
      float(_summed_loss(params, model, jnp.asarray(windows[i:i + batch_size])))
      for i in range(0, n, batch_size))
  return total / n, n * T


@functools.partial(jax.jit, static_argnums=1)
def _summed_loss(params, model: GPT, windows):
  """The sum over `windows` of each window's mean loss (compiled once per model and shape)."""
  return loss_fn(params, model, windows) * windows.shape[0]


def evaluate_split(model: GPT, params, tokens: np.ndarray, tokenizer, batch_size: int = 128):
  """A whole split's exact loss (split_loss), the tokens it predicts, the bytes of text those
  stand for, and bits per byte: {"loss", "tokens", "bytes", "bpb"} (gptjax.eval)."""
  loss, predicted = split_loss(model, params, tokens, batch_size)
  text_bytes = tokenizer_lib.text_bytes(tokenizer, np.asarray(tokens[1:1 + predicted]))
  return dict(loss=loss,
              tokens=predicted,
              bytes=text_bytes,
              bpb=loss * predicted / math.log(2) / text_bytes if text_bytes else None)
