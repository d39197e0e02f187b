"""Everything a run needs before its first step, checked before the run directory is touched.

  run = start(config)   # validated, data open, step compiled and checked to fit, state restored

config -> validate -> token store (the tokenizer resolved and checked once) -> mesh ->
build (eval_shape(init) -> logical specs -> NamedShardings -> jit) -> compile the step -> does it
fit -> take the run directory's lock -> restore the latest intact checkpoint, GPT-2's weights, or
init -> record the run's data. A config that fails anywhere before the lock leaves the run
directory as it was.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from gptjax import compile_cache, devices, hf_gpt2, sharding
from gptjax.checkpoint import Checkpointer, architecture_mismatch
from gptjax.config import ModelConfig, normalize, validate
from gptjax.data import dataset
from gptjax.errors import CheckpointError, UserError, nearest_existing
from gptjax.params import count_params, to_layout
from gptjax.planner import fit
from gptjax.step import Setup, TrainState, build, compile_train_step, mesh_context
from gptjax.training.lock import RunLock


def run_directory(config: ml_collections.ConfigDict) -> str:
  return os.path.join(config.out_dir, config.model_name or config.name)


def check_out_dir(config: ml_collections.ConfigDict) -> None:
  """A UserError unless out_dir is, or can be made, a writable directory (checked, not made)."""
  existing = nearest_existing(config.out_dir)
  problem = ("is a file, not a directory" if not os.path.isdir(existing) else
             "is not writable" if not os.access(existing, os.W_OK | os.X_OK) else None)
  if problem:
    raise UserError(f"--config.out_dir={config.out_dir!r}: {existing!r} {problem}. Fix: choose a "
                    f"directory you can write, e.g. --config.out_dir=out.")


def restore_or_init(config, setup: Setup, checkpointer: Checkpointer) -> tuple[TrainState, int]:
  """The newest intact checkpoint restored into this mesh's shardings (a damaged one is skipped
  with a note), else GPT-2 weights or a fresh init."""

  def load(step):
    meta = checkpointer.read_meta(step)
    differing = architecture_mismatch(meta["architecture"],
                                      ModelConfig.from_config(config).architecture())
    if differing:
      raise CheckpointError(
          f"run directory {checkpointer.directory!r} holds a different architecture (" +
          "; ".join(differing) + "). Fix: train into a new directory with "
          "--config.model_name=<new name>, or use the checkpoint's architecture.")
    target = setup.abstract_state
    if bool(meta["config"].get("scan_layers", False)) == config.scan_layers:
      return checkpointer.restore(step, target.params, target.opt_state)
    # Saved in the other layout (scan_layers): restored as saved, then stacked or unstacked.
    saved = build(with_layout(config, not config.scan_layers), setup.mesh).abstract_state
    restored = checkpointer.restore(step, saved.params, saved.opt_state)
    shardings = jax.tree.map(lambda a: a.sharding, (target.params, target.opt_state))
    return jax.jit(functools.partial(to_layout, scan_layers=config.scan_layers),
                   out_shardings=shardings)(restored)

  found = checkpointer.first_intact(checkpointer.steps_to_try(), load)
  if found is None and not config.init_from:
    return setup.init(jax.random.key(config.seed)), 0
  if found is None:  # fine-tuning: GPT-2's weights instead of a random init
    params = hf_gpt2.init_params_from(config, setup.abstract_state.params)
    opt_shardings = jax.tree.map(lambda a: a.sharding, setup.abstract_state.opt_state)
    opt_state = jax.jit(setup.tx.init, out_shardings=opt_shardings)(params)
    step = 0
  else:
    step, (params, opt_state) = found
    saved = normalize(ml_collections.ConfigDict(checkpointer.read_meta(step)["config"]))
    changed = changed_settings(saved.to_dict(), config.to_dict())
    if changed and jax.process_index() == 0:
      print(f"note: resuming step {step} with settings that differ from the run's: " +
            "; ".join(changed),
            file=sys.stderr,
            flush=True)
  step_array = jax.device_put(jnp.asarray(step, jnp.int32), sharding.replicated(setup.mesh))
  return TrainState(step=step_array, params=params, opt_state=opt_state), step


# Fields a resumed run is expected to change: no note for them.
RESUME_FIELDS = ("max_iters", "out_dir", "compilation_cache_dir", "cpu_devices", "allow_cpu",
                 "mesh", "distributed", "log_interval")


def changed_settings(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
  """"field: saved -> current" for each setting of a resumed run that differs from its checkpoint's
  (the architecture is checked apart: it must not differ)."""
  changed = []
  for key, value in current.items():
    if prefix + key in RESUME_FIELDS or key not in saved:
      continue
    if isinstance(value, dict) and isinstance(saved[key], dict):
      changed += changed_settings(saved[key], value, f"{prefix}{key}.")
    elif saved[key] != value:
      changed.append(f"{prefix}{key}: {saved[key]!r} -> {value!r}")
  return changed


def with_layout(config: ml_collections.ConfigDict, scan_layers: bool) -> ml_collections.ConfigDict:
  """A copy of `config` with the parameter layout `scan_layers`."""
  copy = ml_collections.ConfigDict(config.to_dict())
  copy.scan_layers = scan_layers
  return copy


def save(checkpointer: Checkpointer, config, step: int, state: TrainState,
         losses: dict[str, float]) -> None:
  """Starts an asynchronous save of `state` at `step`, with the architecture, config and losses."""
  meta = dict(architecture=ModelConfig.from_config(config).architecture(),
              config=config.to_dict(),
              **losses)
  checkpointer.save(step, state, meta, losses.get("val_loss"))


@dataclasses.dataclass
class Run:
  """Everything a run needs before its first step."""
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  setup: Setup  # its train_step compiled ahead of time
  token_data: dataset.TokenData
  checkpointer: Checkpointer
  lock: RunLock | None  # process 0's hold on the run directory
  state: TrainState
  start_step: int
  first_record: dict[str, Any]  # compile time and step memory, logged with the first step


def start(config: ml_collections.ConfigDict) -> Run:
  """Validates, builds the mesh and the data, compiles the step and checks that it fits (before
  any state is allocated), then restores the latest checkpoint or initialises."""
  if config.init_from:  # the architecture comes from the checkpoint; differences are noted on stderr
    hf_gpt2.apply_hf_architecture(config, config.init_from)
  validate(config)
  check_out_dir(config)
  token_data = dataset.open_tokens(config)  # before JAX starts: its worker processes may fork
  sharding.use_cpu_devices(config.cpu_devices)
  compile_cache.use(config.compilation_cache_dir)
  sharding.maybe_initialize_distributed(config)  # before JAX starts its backends: on a pod too
  devices.check_accelerator_used(config.allow_cpu)
  mesh = sharding.make_mesh(config)
  setup = build(config, mesh)
  compile_start = time.perf_counter()
  with fit.explain_out_of_memory(config):
    compiled_step = compile_train_step(setup, config)
  step_memory = fit.ensure_fits(config, compiled_step)
  setup = dataclasses.replace(setup, train_step=compiled_step)
  first_record = dict(compile_s=time.perf_counter() - compile_start,
                      step_memory_bytes=step_memory)  # per device, as gptjax.plan reports it
  # Nothing above wrote into the run directory: a config that fails leaves it as it was.
  lock = RunLock(run_directory(config)).acquire() if jax.process_index() == 0 else None
  try:
    checkpointer = Checkpointer(run_directory(config), keep=config.keep_checkpoints)
    with mesh_context(mesh), fit.explain_out_of_memory(config):
      state, start_step = restore_or_init(config, setup, checkpointer)
    dataset.record_run_data(run_directory(config),
                            token_data,
                            resuming=start_step > 0,
                            write=jax.process_index() == 0)
  except BaseException:
    if lock:
      lock.release()
    raise
  return Run(config, mesh, setup, token_data, checkpointer, lock, state, start_step, first_record)


def banner(run: Run) -> str:
  config, mesh = run.config, run.mesh
  return (f"gptjax | {config.name}: {count_params(ModelConfig.from_config(config)).total:,} "
          f"parameters | mesh {dict(mesh.shape)} on {jax.device_count()} "
          f"{jax.devices()[0].platform} device(s), "
          f"{run.first_record['step_memory_bytes'] / 2**30:.2f} GiB each for the step | "
          f"{len(run.token_data.train):,} train / {len(run.token_data.val):,} val tokens "
          f"({run.token_data.tokenizer.name}) | run dir {run_directory(config)}" +
          (f" | resuming from step {run.start_step}" if run.start_step else ""))
