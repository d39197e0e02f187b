"""User-facing errors: one clear message, a non-zero exit, no traceback."""

from __future__ import annotations

import functools
import sys


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


EXIT_USER_ERROR = 2


def exit_on_user_error(main):
  """Wraps an entry point so that a UserError prints `error: ...` and exits 2 instead of a traceback."""

  @functools.wraps(main)
  def wrapper(*args, **kwargs):
    try:
      return main(*args, **kwargs)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(EXIT_USER_ERROR)

  return wrapper
