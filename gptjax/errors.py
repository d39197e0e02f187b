"""User-facing errors: one clear message, a non-zero exit, no traceback; and the two kinds of failure
every command must recognise wherever they surface, a full disk and a device out of memory."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
import sys

from gptjax.units import format_bytes


class UserError(Exception):
  """A mistake in the user's input (config, file, flag): the message says what and how to fix it."""


class ConfigError(UserError, ValueError):
  """An invalid configuration field or preset file."""


class DataError(UserError):
  """An unusable corpus, tokenizer file or token cache."""


class CheckpointError(UserError):
  """A run directory without checkpoints, or one holding a different architecture."""


class DeviceMemoryError(UserError):
  """The train step needs more memory than a device has (found before allocating, or by XLA)."""


class DivergenceError(UserError):
  """Training produced a NaN or infinite loss; the run stopped before saving it."""


class DiskFullError(UserError):
  """A write failed for lack of space (or quota) on the disk of the run directory or a cache."""


EXIT_USER_ERROR = 2
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How the libraries below Orbax (TensorStore) word a full disk in the errors they raise.
DISK_FULL_WORDS = ("No space left on device", "Disk quota exceeded", "OS error 28")


def disk_full(error: BaseException) -> bool:
  """Whether `error`, or an error it was raised from, is a full disk or an exhausted quota."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
      return True
    if any(words in str(error) for words in DISK_FULL_WORDS):
      return True
    error = error.__cause__ or error.__context__
  return False


def out_of_memory(error: BaseException) -> bool:
  """Whether `error` is a device (or host) running out of memory: XLA's RESOURCE_EXHAUSTED, or
  a refused program too large for the device. A full disk (which TensorStore also reports as
  RESOURCE_EXHAUSTED) is not."""
  text = str(error)
  return not disk_full(error) and ("RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower())


def out_of_memory_line(error: BaseException) -> str | None:
  """XLA's own words for an out-of-memory error (its first line that speaks of memory), else None."""
  if not out_of_memory(error):
    return None
  text = str(error)
  return next((line.strip() for line in text.splitlines() if "memory" in line.lower()), text[:300])


def nearest_existing(path: str) -> str:
  """`path` made absolute, or its nearest ancestor that exists."""
  existing = os.path.abspath(path)
  while not os.path.exists(existing) and os.path.dirname(existing) != existing:
    existing = os.path.dirname(existing)
  return existing


def disk_full_error(path: str | None, what: str, resume: str = "") -> DiskFullError:
  """The error for a write to `path` that found its disk full: how much is free there, the fix."""
  where, free = "a disk", ""
  if path:
    where = f"the disk of {path!r}"
    try:
      free = f" ({format_bytes(shutil.disk_usage(nearest_existing(path)).free, 'MiB')} free)"
    except OSError:
      pass
  return DiskFullError(
      f"no space left on {where}{free} while {what}. Fix: free space there, or point the command "
      f"at another disk, then run the same command again" + (f": {resume}" if resume else "."))


@contextlib.contextmanager
def disk_full_as_error(path: str, what: str, resume: str = ""):
  """Turns a full disk met inside the block into disk_full_error(path, what, resume)."""
  try:
    yield
  except OSError as e:
    if disk_full(e):
      raise disk_full_error(path, what, resume) from None
    raise


def exit_on_user_error(main):
  """Wraps an entry point so that a UserError prints `error: ...` and exits 2 instead of a traceback."""

  @functools.wraps(main)
  def wrapper(*args, **kwargs):
    try:
      return main(*args, **kwargs)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(EXIT_USER_ERROR)
    except OSError as e:  # a write that found the disk full, wherever it happened
      if e.errno not in DISK_FULL_ERRNOS:
        raise
      print(f"error: {disk_full_error(e.filename, f'writing ({e.strerror})')}", file=sys.stderr)
      sys.exit(EXIT_USER_ERROR)

  return wrapper
