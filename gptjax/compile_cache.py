"""JAX's persistent compilation cache for gptjax's commands, and its repair.

Compiled programs (init, the train step, evaluation, sampling) are kept on disk, so running a
command again (resuming, another seed, sampling) loads them instead of compiling.
"""

from __future__ import annotations

import os
import sys

import jax

# Programs that compile faster than this are not worth a file in the cache (jax's default: 1 s,
# which would leave out init and evaluation of small models on CPU).
_CACHE_MIN_COMPILE_S = 0.25
_cache_hits = 0
_counting_hits = False


def _count_hit(event: str, **kwargs) -> None:
  global _cache_hits
  if event == "/jax/compilation_cache/cache_hits":
    _cache_hits += 1


def use(directory: str) -> None:
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
    _replace_unreadable_cache_entries()
    _counting_hits = True


def _replace_unreadable_cache_entries() -> None:
  """Makes an unreadable compilation-cache entry cost one compile, once.

  JAX warns about an entry it cannot load (cut short by a kill or a full disk: it writes entries
  in place) and compiles the program, but never stores it again, since its cache keeps an existing
  file: the warning came back on every run. Here such an entry is removed with a note before JAX
  compiles, so the fresh program takes its place. This wraps a private JAX function; where it is
  missing (another JAX version), JAX's own behaviour stays.
  """
  from jax._src import compilation_cache
  load = getattr(compilation_cache, "get_executable_and_time", None)
  if load is None:
    return

  def load_or_remove(cache_key, *args, **kwargs):
    try:
      return load(cache_key, *args, **kwargs)
    except Exception as e:
      directory = jax.config.jax_compilation_cache_dir or ""
      entry = os.path.join(os.path.expanduser(directory), f"{cache_key}-cache")
      if not os.path.isfile(entry):  # not a local LRU cache file: leave it to JAX
        raise
      for path in (entry, entry[:-len("-cache")] + "-atime"):
        if os.path.exists(path):
          os.remove(path)
      print(
          f"note: removed an unreadable compilation cache entry ({type(e).__name__}: "
          f"{str(e).splitlines()[0][:120]}), {entry}; it is compiled and stored again.",
          file=sys.stderr,
          flush=True)
      return None, None

  compilation_cache.get_executable_and_time = load_or_remove


def hits() -> int:
  """Programs this process loaded from the persistent cache instead of compiling them."""
  return _cache_hits
