"""The shared start of the command-line entry points (train, sample, convert)."""

from __future__ import annotations

from absl import app
from absl import logging as absl_logging

from gptjax.errors import exit_on_user_error


def run(main) -> None:
  """absl's app.run, with Orbax's INFO and WARNING logs muted and user errors printed without traceback."""
  absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax warns about read-only opens
  app.run(exit_on_user_error(main))
