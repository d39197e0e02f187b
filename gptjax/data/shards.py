"""The token-shard format: what gptjax.prepare writes and how training reads it (no JAX, no tokenizing).

A data directory holds `train-00000.bin, train-00001.bin, ...` and `val-00000.bin, ...`: raw
little-endian uint16 (uint32 when the vocabulary exceeds 65,536) token ids, documents each followed
by the end-of-text id, and `meta.json`, written last: the tokenizer, the vocabulary, the dtype, per
shard its token count, largest id and fingerprint, and where the tokens came from. Without a
meta.json a directory is not complete; nanoGPT's `train.bin` / `val.bin` (uint16 GPT-2 ids, no
metadata) are read as they are.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from gptjax import files
from gptjax.errors import DataError

META = "meta.json"
# The validation text's byte count (bits per byte; tokenizer.val_bytes), kept beside the shards.
VAL_BYTES = "val_bytes.json"
FORMAT = "gptjax-tokens"
VERSION = 1
SPLITS = ("train", "val")
NANOGPT_FILES = ("train.bin", "val.bin")
# Where a running prepare writes, <STAGING>-<host>-<pid>; moved into place when complete.
STAGING = ".prepare-partial"
LOCK = ".prepare.lock"  # held while a finished prepare checks the directory and moves in


def shard_name(split: str, index: int) -> str:
  return f"{split}-{index:05d}.bin"


def fingerprint(path: str, span: int = 1 << 20) -> str:
  """sha256 of a file's size, first and last MiB: cheap at any size, and it catches a truncated,
  extended or overwritten-at-either-end file."""
  size = os.path.getsize(path)
  digest = hashlib.sha256(str(size).encode())
  with open(path, "rb") as f:
    digest.update(f.read(span))
    f.seek(max(0, size - span))
    digest.update(f.read(span))
  return digest.hexdigest()


class ShardWriter:
  """Appends token arrays to `<directory>/<split>-NNNNN.bin`, starting a new file every
  `shard_tokens` tokens; records each file's count, largest id and fingerprint."""

  def __init__(self, directory: str, split: str, dtype: np.dtype, shard_tokens: int):
    self.directory, self.split, self.dtype, self.shard_tokens = directory, split, dtype, shard_tokens
    self.shards: list[dict] = []
    self.file = None

  def _open_next(self) -> None:
    name = shard_name(self.split, len(self.shards))
    self.file = open(os.path.join(self.directory, name), "wb")
    self.shards.append(dict(file=name, tokens=0, max_token=-1))

  def write(self, tokens: np.ndarray) -> None:
    while len(tokens):
      if self.file is None or self.shards[-1]["tokens"] >= self.shard_tokens:
        self._finish_file()
        self._open_next()
      shard = self.shards[-1]
      part, tokens = np.split(tokens, [self.shard_tokens - shard["tokens"]])
      self.file.write(np.ascontiguousarray(part, dtype=self.dtype).tobytes())
      shard["tokens"] += len(part)
      shard["max_token"] = max(shard["max_token"], int(part.max()))

  def _finish_file(self) -> None:
    if self.file is not None:
      self.file.close()
      self.file = None
      self.shards[-1]["fingerprint"] = fingerprint(
          os.path.join(self.directory, self.shards[-1]["file"]))

  def close(self) -> list[dict]:
    self._finish_file()
    return self.shards


def read_meta(directory: str) -> dict | None:
  """The meta.json of a gptjax data directory; None where there is none."""
  path = os.path.join(directory, META)
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      meta = json.load(f)
    if meta.get("format") != FORMAT:
      raise ValueError(f"format {meta.get('format')!r}, not {FORMAT!r}")
    return meta
  except (OSError, ValueError) as e:
    raise DataError(f"{path!r} is not a gptjax data directory's metadata ({e}). Fix: prepare "
                    f"the directory again (`python -m gptjax.prepare ... --out_dir={directory} "
                    f"--force`).") from e


def shard_problem(directory: str, meta: dict) -> str | None:
  """What is wrong with a data directory's shards (missing, truncated, changed); None if nothing."""
  itemsize = np.dtype(meta["dtype"]).itemsize
  for split in SPLITS:
    for shard in meta["splits"][split]["shards"]:
      path = os.path.join(directory, shard["file"])
      if not os.path.isfile(path):
        return f"shard {path!r} is missing"
      size, expected = os.path.getsize(path), shard["tokens"] * itemsize
      if size != expected:
        return (f"shard {path!r} is {'truncated' if size < expected else 'too long'}: {size:,} "
                f"bytes, {expected:,} recorded")
      if fingerprint(path) != shard["fingerprint"]:
        return f"shard {path!r} differs from what was written (fingerprint)"
  return None


def commit(staging: str, out_dir: str, meta: dict) -> None:
  """Moves a finished prepare's files from `staging` into `out_dir`, meta.json last.

  The old meta.json goes first, so that at every moment either no meta.json exists (the
  directory reads as incomplete) or it describes exactly the shards beside it.
  """
  old_meta = os.path.join(out_dir, META)
  if os.path.exists(old_meta):
    os.remove(old_meta)
  for name in os.listdir(out_dir):
    if is_shard_file(name) or name == VAL_BYTES:  # the old split's byte count goes too
      os.remove(os.path.join(out_dir, name))
  for name in sorted(os.listdir(staging)):
    os.replace(os.path.join(staging, name), os.path.join(out_dir, name))
  files.write_json(old_meta, meta)
  os.rmdir(staging)


def is_shard_file(name: str) -> bool:
  split, _, rest = name.partition("-")
  return split in SPLITS and rest.endswith(".bin") and rest[:-4].isdigit()


def owned_names(name: str) -> bool:
  """Whether gptjax.prepare may replace a file of this name in its out_dir."""
  return name in (META, LOCK, VAL_BYTES,
                  "tokenizer.json") or is_shard_file(name) or name.startswith(
                      (META + ".tmp", STAGING))


def staging_dirs(out_dir: str) -> list[str]:
  return sorted(
      os.path.join(out_dir, name)
      for name in os.listdir(out_dir)
      if name.startswith(STAGING)) if os.path.isdir(out_dir) else []


class TokenShards:
  """Shards read as one token sequence through np.memmap: only the pages a batch touches are
  read. Windows may straddle two shards."""

  def __init__(self, paths: list[str], dtype):
    self.arrays = [np.memmap(path, dtype=dtype, mode="r") for path in paths]
    self.starts = np.cumsum([0] + [len(a) for a in self.arrays])
    self.dtype = np.dtype(dtype)

  def __len__(self) -> int:
    return int(self.starts[-1])

  def windows(self, offsets: np.ndarray, length: int) -> np.ndarray:
    flat = offsets.reshape(-1)
    out = np.empty((len(flat), length), np.int32)
    shard = np.searchsorted(self.starts, flat, side="right") - 1
    for index in np.unique(shard):
      rows = np.flatnonzero(shard == index)
      local = flat[rows] - self.starts[index]
      inside = local + length <= len(self.arrays[index])
      out[rows[inside]] = self.arrays[index][local[inside, None] + np.arange(length)]
      for row in rows[~inside]:  # straddles the next shard(s)
        out[row] = self[int(flat[row]):int(flat[row]) + length]
    return out.reshape(offsets.shape + (length,))

  def __getitem__(self, item):
    if not isinstance(item, slice):
      raise TypeError("TokenShards take slices; use windows() for batches")
    start, stop, step = item.indices(len(self))
    parts = []
    for index, array in enumerate(self.arrays):
      lo, hi = max(start, self.starts[index]), min(stop, self.starts[index + 1])
      if lo < hi:
        parts.append(array[lo - self.starts[index]:hi - self.starts[index]])
    return (np.concatenate(parts) if parts else np.zeros(0, self.dtype))[::step]

  def __array__(self, dtype=None, copy=None):
    return np.asarray(self[:], dtype=dtype)


def open_tokens(paths: list[str], dtype):
  """A split's tokens: one np.memmap for one shard, TokenShards for several."""
  return np.memmap(paths[0], dtype=dtype, mode="r") if len(paths) == 1 else TokenShards(
      paths, dtype)
