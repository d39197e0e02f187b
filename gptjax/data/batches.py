"""Batches: random windows of block_size + 1 tokens, a pure function of (seed, step).

Offsets come from a generator seeded with (seed, step), so a run's batches need no data state to
resume, and every process of a multi-host run draws the same global batch and reads only its own
rows. Reading is through np.memmap: each batch unmaps the pages it touched, so a process's memory
does not grow with the corpus. On accelerators the Prefetcher reads the next batches in threads.
"""

from __future__ import annotations

import concurrent.futures
import mmap
from typing import Callable

import numpy as np

from gptjax.data.shards import TokenShards

_EVAL_STREAM = 7_919  # separates evaluation batches' random stream from training's


def windows(tokens, offsets: np.ndarray, length: int) -> np.ndarray:
  """tokens[o : o + length] for every offset, as int32: shape offsets.shape + (length,)."""
  if isinstance(tokens, TokenShards):
    result = tokens.windows(offsets, length)
  else:
    result = np.asarray(tokens[offsets[..., None] + np.arange(length)], dtype=np.int32)
  release_pages(tokens)
  return result


def release_pages(tokens) -> None:
  """Unmaps the pages of memmapped tokens that this process has touched (they stay in the page
  cache). Without it a run's resident memory grows toward the corpus size: every page fault on a
  file mapping maps up to 16 neighbouring cached pages too (the kernel's fault-around)."""
  for array in getattr(tokens, "arrays", [tokens]):
    mapping = getattr(array, "_mmap", None)
    if mapping is not None:
      mapping.madvise(mmap.MADV_DONTNEED)


class Prefetcher:
  """Reads the training windows of the next `depth` steps in `depth` threads while the device runs
  the current one. Batches are a pure function of (seed, step), so reading ahead changes no batch;
  cold reads from disk (a random read per row: milliseconds a batch) overlap the step and each
  other instead of delaying it. depth 0 reads each batch when it is asked for."""

  def __init__(self, read: Callable[[int], np.ndarray], stop: int, depth: int = 2):
    self.read, self.stop, self.depth = read, stop, depth
    self.pending: dict[int, concurrent.futures.Future] = {}
    self.pool = (concurrent.futures.ThreadPoolExecutor(depth, thread_name_prefix="gptjax-batches")
                 if depth else None)

  def __call__(self, step: int) -> np.ndarray:
    """The windows of `step` (read already, or now); starts reading the steps after it."""
    if self.pool is None:
      return self.read(step)
    for ahead in range(step, min(step + self.depth + 1, self.stop)):
      if ahead not in self.pending:
        self.pending[ahead] = self.pool.submit(self.read, ahead)
    future = self.pending.pop(step, None)
    return self.read(step) if future is None else future.result()

  def close(self) -> None:
    if self.pool is not None:
      self.pool.shutdown(wait=True, cancel_futures=True)


def train_batch(tokens: np.ndarray,
                seed: int,
                step: int,
                micro_batches: int,
                batch_size: int,
                block_size: int,
                rows: slice = slice(None)) -> np.ndarray:
  """The training windows of `step`: (micro_batches, batch_size, block_size + 1), rows `rows` only.

  Offsets depend only on (seed, step), so every process draws the same global batch.
  """
  rng = np.random.default_rng([seed, step])
  offsets = rng.integers(0, len(tokens) - block_size, size=(micro_batches, batch_size))
  return windows(tokens, offsets[:, rows], block_size + 1)


def eval_batch(tokens: np.ndarray,
               seed: int,
               index: int,
               batch_size: int,
               block_size: int,
               rows: slice = slice(None)) -> np.ndarray:
  """Evaluation batch `index`: the same windows at every evaluation, so losses are comparable."""
  rng = np.random.default_rng([seed, _EVAL_STREAM, index])
  offsets = rng.integers(0, len(tokens) - block_size, size=(1, batch_size))
  return windows(tokens, offsets[:, rows], block_size + 1)
