"""Files every command writes: whole or not at all, a full disk as one error, locks on any OS.

Each JSON and text file gptjax writes (config.json, metrics.jsonl rewrites, data.json, meta.json)
goes through `write_atomic`: a temporary file, fsync'ed and renamed over the old one, so that a
kill or a full disk leaves the old file whole and no temporary behind. Locks are `filelock`'s
descriptor locks: flock on POSIX, LockFileEx on Windows, released by the OS when the process dies.
"""

from __future__ import annotations

import contextlib
import json
import os

import filelock

from gptjax.errors import disk_full_as_error


def write_atomic(path: str, text: str, resume: str = "") -> None:
  """Writes `text` to `path` through a temporary file renamed over it. A full disk is a
  DiskFullError naming the file, with `resume` as what running the command again does."""
  tmp = f"{path}.tmp{os.getpid()}"
  with disk_full_as_error(path, f"writing {os.path.basename(path)}", resume):
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


def write_json(path: str, value, resume: str = "") -> None:
  """`value` as indented JSON, written with write_atomic."""
  write_atomic(path, json.dumps(value, indent=2), resume)


def read_json(path: str):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def try_lock(fd: int) -> bool:
  """Takes an exclusive lock on an open file without waiting; False when another process holds
  it. Raises OSError where the file system has no locks."""
  return filelock.lock_descriptor(fd, blocking=False)


@contextlib.contextmanager
def locked(path: str):
  """Holds an exclusive lock on the file `path` (created if missing) for the block, waiting for
  another holder to finish first."""
  with open(path, "a+") as f:
    filelock.lock_descriptor(f.fileno(), blocking=True)
    try:
      yield
    finally:
      filelock.unlock_descriptor(f.fileno())
