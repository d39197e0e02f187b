"""Everything a run needs before its first step, checked before the run directory is touched.

  run = start(config)   # validated, data open, step compiled and checked to fit, state restored

config -> the cheap local checks (fields, files, out_dir) -> GPT-2's architecture (init_from) ->
a run directory trained with another architecture or other settings -> token store (the tokenizer
resolved and checked once) -> mesh -> build (eval_shape(init) -> logical specs -> NamedShardings
-> jit) -> compile the step -> does it fit -> take the run directory's lock -> restore the latest
intact checkpoint, GPT-2's weights, or init -> record the run's data. A config that fails
anywhere, or a Ctrl-C, before the first step leaves the run directory as it was.

A run directory's checkpoint trained with other settings that shape training (every field but
config.OPERATIONAL_FIELDS) is refused, naming the differences and both ways on: a new run
directory, or --config.resume_with_changes=True to continue it with the new settings on purpose.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from gptjax import compile_cache, devices, files, hf_gpt2, sharding, store, units
from gptjax.checkpoint import Checkpointer, architecture_mismatch
from gptjax.config import OPERATIONAL_FIELDS, ModelConfig, validate
from gptjax.data import dataset
from gptjax.errors import CheckpointError, UserError
from gptjax.params import count_params, to_layout
from gptjax.planner import fit
from gptjax.step import Setup, TrainState, build, mesh_context
from gptjax.training.lease import LeaseLock
from gptjax.training.profile import profile_range
from gptjax.training.lock import RunLock


def run_directory(config: ml_collections.ConfigDict) -> str:
  return os.path.join(config.out_dir, config.model_name or config.name)


def check_out_dir(config: ml_collections.ConfigDict) -> None:
  """A UserError unless out_dir is, or can be made, a writable directory (tried, nothing left);
  a URL must be one Orbax writes to (its bucket is tried with the first write)."""
  problem = (store.scheme_problem(config.out_dir)
             if store.is_url(config.out_dir) else files.unwritable_dir(config.out_dir))
  if problem:
    raise UserError(f"--config.out_dir={config.out_dir!r}: {problem}. Fix: choose a directory "
                    f"you can write, e.g. --config.out_dir=out.")


def check_locally(config: ml_collections.ConfigDict) -> None:
  """The cheap checks, on this machine alone, before anything slow or networked (GPT-2's weights
  or ranks from the hub, compiling): the fields, the files the config names, out_dir."""
  validate(config)
  profile_range(config.profile_steps)
  dataset.check_sources(config)
  if config.init_from:
    hf_gpt2.check_local(config.init_from, flag="--config.init_from")
  check_out_dir(config)


def saved_meta(run_dir: str) -> tuple[int, dict[str, Any]] | None:
  """(step, meta) of the newest checkpoint whose meta reads, straight from Orbax's files (before
  JAX starts); None without one. restore_or_init checks the step it restores again."""
  directory = os.path.join(run_dir, "checkpoints")
  steps = sorted((int(n) for n in store.listdir(directory) if n.isdigit()), reverse=True)
  for step in steps:
    try:
      return step, json.loads(
          store.read_text(os.path.join(directory, str(step), "meta", "metadata")))
    except (OSError, ValueError):
      continue
  return None


def check_resume(config: ml_collections.ConfigDict, found=None) -> None:
  """A CheckpointError when the run directory's checkpoint (`found`: (step, meta), default its
  newest) holds another architecture, or was trained with other settings that shape training
  and config.resume_with_changes is not set (with it, restore_or_init notes them)."""
  found = found or saved_meta(run_directory(config))
  if found is None:
    return
  step, meta = found
  where = f"run directory {run_directory(config)!r}"
  differing = architecture_mismatch(meta["architecture"],
                                    ModelConfig.from_config(config).architecture())
  if differing:
    raise CheckpointError(
        f"{where} holds a different architecture (" + "; ".join(differing) + "). Fix: train into a "
        f"new directory with --config.model_name={free_model_name(config)}, or use the "
        f"checkpoint's architecture.")
  # The optimizer fixes the state's layout (resume_with_changes cannot bridge it); runs from before
  # the field existed used AdamW.
  saved_optimizer = meta["config"].get("optimizer", "adamw")
  if saved_optimizer != config.optimizer:
    raise CheckpointError(
        f"{where} was trained with optimizer={saved_optimizer!r}, not {config.optimizer!r}, and "
        f"holds that optimizer's state. Fix: resume with --config.optimizer={saved_optimizer}, or "
        f"train a new run with --config.model_name={free_model_name(config)}.")
  changed = changed_settings(meta["config"], config.to_dict())
  if changed and not config.resume_with_changes:
    raise CheckpointError(
        f"{where} holds checkpoint step {step}, trained with other settings: " +
        "; ".join(changed) + f". Fix: train a new run with --config.model_name="
        f"{free_model_name(config)}, or continue this one with the new settings with "
        f"--config.resume_with_changes=True.")


def free_model_name(config: ml_collections.ConfigDict) -> str:
  """<model_name>_<n>, the first that names no directory in out_dir yet."""
  return files.free_name(config.out_dir, config.model_name or config.name)


def restore_or_init(config, setup: Setup, checkpointer: Checkpointer) -> tuple[TrainState, int]:
  """The newest intact checkpoint restored into this mesh's shardings (a damaged one is skipped
  with a note), else GPT-2 weights or a fresh init."""

  def load(step):
    meta = checkpointer.read_meta(step)
    check_resume(config, (step, meta))
    check_optimizer_kind(config, meta["config"], step)
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
    saved = checkpointer.read_meta(step)["config"]
    changed = changed_settings(saved, config.to_dict())
    notes = [f"resuming step {step} with new settings, on purpose: " +
             "; ".join(changed)] if changed else []
    if saved.get("max_iters") == step < config.max_iters:
      notes.append(f"{run_directory(config)} ended at step {step} (max_iters={step}); continuing "
                   f"it to max_iters={config.max_iters}. Its step-{step} checkpoint is kept.")
    if notes and jax.process_index() == 0:
      print("".join(f"note: {line}\n" for line in notes), end="", file=sys.stderr, flush=True)
  step_array = jax.device_put(jnp.asarray(step, jnp.int32), sharding.replicated(setup.mesh))
  return TrainState(step=step_array, params=params, opt_state=opt_state), step


def check_optimizer_kind(config, saved: dict[str, Any], step: int) -> None:
  """A CheckpointError when skip_nonfinite_updates is turned on or off against the checkpoint's:
  the optimizer state then has another structure (optax.apply_if_finite's counters)."""
  before, now = bool(saved.get("skip_nonfinite_updates", 0)), bool(config.skip_nonfinite_updates)
  if before != now:
    raise CheckpointError(
        f"checkpoint step {step} in {run_directory(config)!r} was trained with "
        f"skip_nonfinite_updates={saved.get('skip_nonfinite_updates', 0)}, whose optimizer state "
        f"{'has' if before else 'lacks'} the skipped-update counters. Fix: resume with "
        f"--config.skip_nonfinite_updates={saved.get('skip_nonfinite_updates', 0)}, or train a new "
        f"run with --config.model_name={free_model_name(config)}.")


def changed_settings(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """"field: saved -> current" for each field that shapes training (not OPERATIONAL_FIELDS) and
  differs between a checkpoint's config and this run's; fields one of them lacks (a checkpoint
  from before the field existed) are not compared."""
  return [
      f"{key}: {saved[key]!r} -> {value!r}" for key, value in current.items()
      if key not in OPERATIONAL_FIELDS and key in saved and saved[key] != value
  ]


def settings_fingerprint(config: ml_collections.ConfigDict) -> int:
  """A 48-bit hash of the fields that shape training (a checkpoint's mark for RunEnds)."""
  shaping = {k: v for k, v in config.to_dict().items() if k not in OPERATIONAL_FIELDS}
  return int(hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:12], 16)


def with_layout(config: ml_collections.ConfigDict, scan_layers: bool) -> ml_collections.ConfigDict:
  """A copy of `config` with the parameter layout `scan_layers`."""
  copy = ml_collections.ConfigDict(config.to_dict())
  copy.scan_layers = scan_layers
  return copy


def save(checkpointer: Checkpointer, config, step: int, state: TrainState,
         losses: dict[str, float]) -> None:
  """Starts an asynchronous save of `state` at `step`, with the architecture, config and losses,
  and the marks that keep a run's end and the last step of its settings (checkpoint.RunEnds)."""
  meta = dict(architecture=ModelConfig.from_config(config).architecture(),
              config=config.to_dict(),
              **losses)
  checkpointer.save(step,
                    state,
                    meta,
                    losses.get("val_loss"),
                    marks=dict(max_iters=config.max_iters, settings=settings_fingerprint(config)))


@dataclasses.dataclass
class Run:
  """Everything a run needs before its first step."""
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  setup: Setup  # its train_step compiled ahead of time
  token_data: dataset.TokenData
  checkpointer: Checkpointer
  lock: RunLock | LeaseLock | None  # process 0's hold on the run directory
  state: TrainState
  start_step: int
  first_record: dict[str, Any]  # compile time and step memory, logged with the first step


def start(config: ml_collections.ConfigDict, say=print) -> Run:
  """Checks what is cheap first, then builds the mesh and the data, compiles the step and checks
  that it fits (before any state is allocated), then restores the latest checkpoint or
  initialises. `say` prints what takes a while (compiling)."""
  check_locally(config)
  if config.init_from:  # the architecture comes from the checkpoint; differences are noted on stderr
    hf_gpt2.apply_hf_architecture(config, config.init_from)
    validate(config)
  check_resume(config)
  token_data = dataset.open_tokens(config)  # before JAX starts: its worker processes may fork
  sharding.use_cpu_devices(config.cpu_devices)
  compile_cache.use(config.compilation_cache_dir)
  sharding.maybe_initialize_distributed(config)  # before JAX starts its backends: on a pod too
  devices.check_accelerator_used(config.allow_cpu)
  mesh = sharding.make_mesh(config)
  compile_start = time.perf_counter()
  main = jax.process_index() == 0
  if main:
    say(
        f"compiling the train step ({config.name}, {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s); the compilation cache makes the next start quick)",
        flush=True)
  # remat "auto" decided here, for these devices; config.json keeps "auto"
  config, setup, compiled_step = fit.compile_train_step(config, mesh,
                                                        say if main else lambda line: None)
  step_memory = fit.ensure_fits(config, compiled_step)
  setup = dataclasses.replace(setup, train_step=compiled_step)
  first_record = dict(compile_s=time.perf_counter() - compile_start,
                      step_memory_bytes=step_memory)  # per device, as gptjax.plan reports it
  # Nothing above wrote into the run directory: a config that fails leaves it as it was.
  lock_kind = LeaseLock if store.is_url(run_directory(config)) else RunLock  # a bucket: a lease
  lock = lock_kind(run_directory(config)).acquire() if jax.process_index() == 0 else None
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
          f"{units.gib(run.first_record['step_memory_bytes'])} each for the step | "
          f"{len(run.token_data.train):,} train / {len(run.token_data.val):,} val tokens "
          f"({run.token_data.tokenizer.name}) | run dir {run_directory(config)}" +
          (f" | resuming from step {run.start_step}" if run.start_step else ""))
