"""Files every command writes: whole or not at all, a full disk as one error, locks on any OS,
nothing left behind by an interrupt.

Each JSON and text file gptjax writes (config.json, metrics.jsonl rewrites, data.json, meta.json)
goes through `write_atomic`: a temporary file, fsync'ed and renamed over the old one, so that a
kill or a full disk leaves the old file whole and no temporary behind. Locks are `filelock`'s
descriptor locks: flock on POSIX, LockFileEx on Windows, released by the OS when the process dies;
a lock file is removed when its holder releases it. What a command must undo when Ctrl-C stops it
(a lock, a directory it is writing) is registered with `undo_on_interrupt`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from typing import Callable

import filelock

from gptjax.errors import disk_full_as_error, nearest_existing

# What gptjax.cli's Ctrl-C handler undoes before the process exits, newest first.
_INTERRUPT_UNDOS: list[Callable[[], None]] = []


@contextlib.contextmanager
def undo_on_interrupt(undo: Callable[[], None]):
  """Runs `undo` if Ctrl-C ends the command inside the block (gptjax.cli's handler exits the
  process at once, without unwinding: this is how the block cleans up anyway)."""
  _INTERRUPT_UNDOS.append(undo)
  try:
    yield
  finally:
    _INTERRUPT_UNDOS.remove(undo)


def add_interrupt_undo(undo: Callable[[], None]) -> None:
  """undo_on_interrupt for what outlives a block: until remove_interrupt_undo(undo)."""
  _INTERRUPT_UNDOS.append(undo)


def remove_interrupt_undo(undo: Callable[[], None]) -> None:
  if undo in _INTERRUPT_UNDOS:
    _INTERRUPT_UNDOS.remove(undo)


def run_interrupt_undos() -> None:
  """Called by the Ctrl-C handler: every registered undo, newest first, errors ignored."""
  for undo in reversed(list(_INTERRUPT_UNDOS)):
    try:
      undo()
    except Exception:  # the process exits next: nothing else can be done
      pass


def remove_tree(path: str) -> None:
  shutil.rmtree(path, ignore_errors=True)


def free_name(parent: str, base: str) -> str:
  """<base>_<n>, the first n >= 2 that names nothing in `parent` yet (a new run's model_name)."""
  n = 2
  while os.path.exists(os.path.join(parent, f"{base}_{n}")):
    n += 1
  return f"{base}_{n}"


def unwritable_dir(path: str) -> str | None:
  """Why the directory `path` cannot be made or written (None when it can), found without leaving
  anything behind: an empty directory is made and removed in the nearest existing ancestor. As
  root, /proc and /sys look writable to os.access; only trying tells."""
  existing = nearest_existing(path)
  if not os.path.isdir(existing):
    return f"{existing!r} is a file, not a directory"
  probe = os.path.join(existing, f".gptjax-write-test-{os.getpid()}")
  try:
    os.mkdir(probe)
    os.rmdir(probe)
  except OSError as e:
    if e.errno == errno.EEXIST:
      return None
    return f"{existing!r} cannot be written ({e.strerror or e})"
  return None


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


def still_at(file, path: str) -> bool:
  """Whether the open `file` is still the file at `path`: a lock taken on a lock file that its
  holder removed meanwhile (on release) is no lock, and is taken again on the new file."""
  try:
    return os.path.samestat(os.fstat(file.fileno()), os.stat(path))
  except FileNotFoundError:
    return False


@contextlib.contextmanager
def locked(path: str):
  """Holds an exclusive lock on the file `path` for the block, waiting for another holder to
  finish first. The file exists only while someone holds or waits for it."""
  while True:
    f = open(path, "a+")
    try:
      filelock.lock_descriptor(f.fileno(), blocking=True)
    except BaseException:
      f.close()
      raise
    if still_at(f, path):
      break
    f.close()
  try:
    with undo_on_interrupt(lambda: _remove(path)):
      yield
  finally:
    _remove(path)  # still holding it: a waiter then finds its file gone and takes a new one
    f.close()


def _remove(path: str) -> None:
  try:
    os.remove(path)
  except FileNotFoundError:
    pass
