"""Will it fit: the checks `plan --check` runs, and what the trainer needs from the planner
(`compile_train_step` deciding remat "auto", `ensure_fits` after compiling its step,
`explain_out_of_memory` around running it)."""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any

import jax
import ml_collections

from gptjax import config as config_lib
from gptjax import sharding, step
from gptjax.data import tokenizer as tokenizer_lib
from gptjax.devices import DEVICE_MEMORY_ENV
from gptjax.errors import ConfigError, DeviceMemoryError, out_of_memory, out_of_memory_line
from gptjax.planner import compiled as compiled_lib
from gptjax.planner import estimate as estimate_lib
from gptjax.planner import targets
from gptjax.planner.estimate import Estimate
from gptjax.planner.options import REMAT_AUTO, REMAT_AUTO_ORDER, decide_remat
from gptjax.planner.search import (fewest_changes_that_fit, format_overrides)
from gptjax.units import gib


def check(config: ml_collections.ConfigDict,
          target: targets.Target,
          fast: bool = True) -> tuple[list[str], Estimate | None]:
  """Everything that would stop `config` on `target`, one line each with its fix, and the estimate.

  Checks the config's fields, the mesh against the device count, the batch against the
  data-parallel size, heads and vocabulary against tensor parallelism, the tokenizer and input
  file, and the memory (with `fast`, per-layer extrapolation of shallow compiles).
  """
  problems = []
  try:
    config_lib.validate(config)
    shape = sharding.mesh_shape(config, target.num_devices)
    sharding.validate_for_mesh(config, shape)
  except ConfigError as e:
    return [str(e)], None
  if config.input_file and not os.path.isfile(config.input_file):
    problems.append(f"config field 'input_file': {config.input_file!r} does not exist. Fix: a "
                    f"path to a UTF-8 text file, or \"\" for the embedded default corpus.")
  tokenizer = config_lib.resolve_tokenizer(config)
  if tokenizer == "gpt2" and not _gpt2_ranks_available(config):
    problems.append("config field 'tokenizer_path': GPT-2 BPE needs tiktoken's gpt2 ranks, which "
                    "are not cached here and would be downloaded. Fix: set "
                    "--config.tokenizer_path=<gpt2.tiktoken> (or $GPTJAX_GPT2_TIKTOKEN) offline.")
  result = estimate_lib.estimate(config, target, fast=fast)
  if not result.fits:
    problems.append(memory_problem(config, target, result.memory.total, result.method))
  return problems, result


def _gpt2_ranks_available(config: ml_collections.ConfigDict) -> bool:
  paths = [config.tokenizer_path, os.environ.get(tokenizer_lib.GPT2_TIKTOKEN_ENV, "")]
  if any(path and os.path.isfile(path) for path in paths):
    return True
  cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                                               "data-gym-cache")
  return os.path.isdir(cache) and bool(os.listdir(cache))


def memory_problem(config: ml_collections.ConfigDict, target: targets.Target, needed: int,
                   source: str) -> str:
  """The one line that says a config does not fit, by how much, and what would."""
  return (f"memory: the train step needs {gib(needed)} per device ({source}), but "
          f"{target.name} ({target.chip.name}) has {gib(target.device_memory_bytes)}. Fix: "
          f"{memory_fix(config, target)}.")


def memory_fix(config: ml_collections.ConfigDict, target: targets.Target) -> str:
  """The settings with the fewest changes that fit `target`, as --config flags (compiled for the
  local devices when they are the target: cheap there, and exact)."""
  found = fewest_changes_that_fit(config, target, compile=target.name == "local")
  if found is None:
    return ("a smaller model, or more devices (`python -m gptjax.plan --config=... --target=... "
            "--search` finds what fits)")
  candidate, total = found
  return (f"{format_overrides(candidate.estimate.settings, config)} (planned {gib(total)} per "
          f"device; `python -m gptjax.plan --search` ranks every option)")


def compile_train_step(config: ml_collections.ConfigDict,
                       mesh: jax.sharding.Mesh,
                       say=lambda line: None) -> tuple[ml_collections.ConfigDict, step.Setup, Any]:
  """(config, setup, compiled train step) for `mesh`'s devices (this process's), with remat "auto"
  decided by compiling: the first policy whose step leaves 10% of a device free (options.
  decide_remat; `say` gets the line naming it), a policy XLA refuses as too big counting as not
  fitting. Other configs: one build and compile."""

  auto = config_lib.remat_name(config.remat) == REMAT_AUTO

  def attempt(candidate):
    setup = step.build(candidate, mesh)
    try:
      compiled = step.compile_train_step(setup, candidate)
    except jax.errors.JaxRuntimeError as e:
      if auto and out_of_memory(e) and candidate.remat != REMAT_AUTO_ORDER[-1]:
        return (setup, None), math.inf  # XLA refused the program: the next policy then
      with explain_out_of_memory(candidate):
        raise
    return (setup, compiled), compiled_lib.figures_of(compiled).total

  decided, (setup, compiled) = decide_remat(config,
                                            targets.local_target().device_memory_bytes, attempt,
                                            say)
  return decided, setup, compiled


def ensure_fits(config: ml_collections.ConfigDict, compiled) -> int:
  """The compiled train step's bytes per device; DeviceMemoryError when they exceed the device's.

  gptjax.train calls this after compiling its step and before allocating any state. On CPUs it
  checks only when $GPTJAX_DEVICE_MEMORY_GB sets a limit (host RAM is shared and swappable).
  """
  needed = compiled_lib.figures_of(compiled).total
  target = targets.local_target()
  if target.platform == "cpu" and not os.environ.get(DEVICE_MEMORY_ENV):
    return needed
  if target.device_memory_bytes and needed > target.device_memory_bytes:
    raise DeviceMemoryError(
        memory_problem(config, target, needed, "XLA's memory analysis of the "
                       "compiled step") + " Nothing was allocated.")
  return needed


@contextlib.contextmanager
def explain_out_of_memory(config: ml_collections.ConfigDict):
  """Turns an out-of-memory error from XLA into the planner's one clear DeviceMemoryError."""
  try:
    yield
  except jax.errors.JaxRuntimeError as e:
    if not out_of_memory(e):
      raise
    target = targets.local_target()
    raise DeviceMemoryError(
        f"{target.chip.name} ran out of memory: {out_of_memory_line(e)}. Fix: "
        f"{memory_fix(config, target)}. Checkpoints written so far are intact.") from e
