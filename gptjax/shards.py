"""The token-shard format that gptjax.prepare writes and training reads (no JAX, no tokenizing).

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

from gptjax.errors import DataError

META = "meta.json"
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
      self.shards[-1]["fingerprint"] = fingerprint(os.path.join(self.directory,
                                                                self.shards[-1]["file"]))

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
                    f"the directory again with python -m gptjax.prepare.") from e


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


def replace_file(path: str, text: str) -> None:
  """Writes `path` through a temporary file renamed over it: a cut (a kill, a full disk) leaves
  the old file whole, and no temporary file behind."""
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json_atomic(path: str, value) -> None:
  replace_file(path, json.dumps(value, indent=2))


def commit(staging: str, out_dir: str, meta: dict) -> None:
  """Moves a finished prepare's files from `staging` into `out_dir`, meta.json last.

  The old meta.json goes first, so that at every moment either no meta.json exists (the
  directory reads as incomplete) or it describes exactly the shards beside it.
  """
  old_meta = os.path.join(out_dir, META)
  if os.path.exists(old_meta):
    os.remove(old_meta)
  for name in os.listdir(out_dir):
    if is_shard_file(name):
      os.remove(os.path.join(out_dir, name))
  for name in sorted(os.listdir(staging)):
    os.replace(os.path.join(staging, name), os.path.join(out_dir, name))
  write_json_atomic(old_meta, meta)
  os.rmdir(staging)


def is_shard_file(name: str) -> bool:
  split, _, rest = name.partition("-")
  return split in SPLITS and rest.endswith(".bin") and rest[:-4].isdigit()


def owned_names(name: str) -> bool:
  """Whether gptjax.prepare may replace a file of this name in its out_dir."""
  return name in (META, LOCK, "tokenizer.json") or is_shard_file(name) or name.startswith(
      (META + ".tmp", STAGING))


def staging_dirs(out_dir: str) -> list[str]:
  return sorted(os.path.join(out_dir, name) for name in os.listdir(out_dir)
                if name.startswith(STAGING)) if os.path.isdir(out_dir) else []
