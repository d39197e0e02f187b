"""The shared start of the command-line entry points (train, sample, convert), and the persistent
compilation cache they share."""

from __future__ import annotations

import os
import sys

import jax
from absl import app
from absl import logging as absl_logging

from gptjax import config as config_module
from gptjax import targets
from gptjax.errors import EXIT_USER_ERROR, UserError, exit_on_user_error

# Programs that compile faster than this are not worth a file in the cache (jax's default: 1 s,
# which would leave out init and evaluation of small models on CPU).
_CACHE_MIN_COMPILE_S = 0.25
_cache_hits = 0
_counting_hits = False


def run(main) -> None:
  """absl's app.run, with Orbax's INFO and WARNING logs muted and user errors printed without
  traceback. Before JAX starts: GPUs lend JAX 90% of their memory (JAX's default is 75%; a set
  XLA_PYTHON_CLIENT_MEM_FRACTION wins), and libtpu gets gptjax's flags (targets.LIBTPU_FLAGS)."""
  os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{targets.GPTJAX_GPU_MEMORY_FRACTION:.2f}")
  targets.add_libtpu_flags()
  absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax warns about read-only opens
  app.run(exit_on_user_error(main))


def preflight(argv: list[str]) -> list[str]:
  """Checks the preset and the override names before absl parses them; rewrites JSON presets.

  absl would print a traceback for a missing preset or a misspelt --config.<field>; here each is
  one clear error. --config=x.json becomes --config=<gptjax/config.py>:x.json, loaded by load_config.
  """
  try:
    config, result = None, []
    for arg in argv:
      if arg.startswith("--config="):
        path = arg.split("=", 1)[1]
        config = config_module.load_config(path)
        arg = f"--config={config_module.__file__}:{path}" if path.endswith(".json") else arg
      result.append(arg)
    for arg in argv:
      if config is not None and arg.startswith("--config."):
        field = arg[len("--config."):].split("=", 1)[0]
        config_module.check_field_path(config, field, source=f"--config.{field}")
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)
  return result


def _count_hit(event: str, **kwargs) -> None:
  global _cache_hits
  if event == "/jax/compilation_cache/cache_hits":
    _cache_hits += 1


def use_compilation_cache(directory: str) -> None:
  """Keeps compiled programs in `directory` (JAX's persistent compilation cache), so running a
  command again (resuming, another seed, sampling) loads the train step instead of compiling it.
  "" leaves JAX's own setting alone ($JAX_COMPILATION_CACHE_DIR, off unless set), and a set
  $JAX_COMPILATION_CACHE_DIR wins over `directory`. Takes effect only before the process's first
  compilation, as JAX reads the setting once."""
  if directory and not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
      jax.config.update("jax_persistent_cache_min_compile_time_secs", _CACHE_MIN_COMPILE_S)
  global _counting_hits
  if not _counting_hits:  # once per process: listeners cannot be removed
    jax.monitoring.register_event_listener(_count_hit)
    _counting_hits = True


def compilation_cache_hits() -> int:
  """Programs this process loaded from the persistent cache instead of compiling them."""
  return _cache_hits
