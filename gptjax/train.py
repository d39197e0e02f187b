"""Training: the loop and `python -m gptjax.train` (the step itself is gptjax/step.py).

  python -m gptjax.train --config=configs/tiny_char.py --config.max_iters=200

Data flow: config -> validate -> mesh -> eval_shape(init) -> logical specs -> NamedShardings ->
restore-or-init (jit with out_shardings) -> jit(train_step, donated state) -> loop (batch -> step ->
log -> eval -> checkpoint) -> <out_dir>/<model_name>/ (checkpoints/, config.json, metrics.jsonl,
tensorboard/, loss.png). Re-running the same command resumes from the latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import signal
import sys
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from absl.app import UsageError
from ml_collections import config_flags
from tqdm import tqdm

from gptjax import cli, hf_gpt2, monitor, plan
from gptjax import data as data_lib
from gptjax import sharding
from gptjax.checkpoint import Checkpointer, architecture_mismatch
from gptjax.config import ModelConfig, validate
from gptjax.errors import CheckpointError, UserError
from gptjax.monitor import MetricsWriter, Recorder, device_peak_flops, write_atomically
from gptjax.params import count_params
from gptjax.run_lock import RunLock
from gptjax.step import (Setup, TrainState, build, compile_train_step, global_batch,
                         mesh_context)


def one_step_in_flight() -> bool:
  """Whether the loop must wait for each step before dispatching the next: several CPU devices.

  XLA's CPU devices share one thread pool, and a device that runs ahead into the next program
  blocks a pool thread in that program's all-reduce. With as many pool threads as cores (2 here),
  two steps in flight deadlocked in jax 0.10.2 (XLA aborts after 40 s: "Expected 2 threads to join
  the rendezvous"). Waiting costs nothing measurable: the next batch is made while a step runs.
  """
  return jax.devices()[0].platform == "cpu" and jax.local_device_count() > 1


def run_directory(config: ml_collections.ConfigDict) -> str:
  return os.path.join(config.out_dir, config.model_name or config.name)


def check_out_dir(config: ml_collections.ConfigDict) -> None:
  """A UserError unless out_dir is, or can be made, a writable directory (checked, not made)."""
  existing = os.path.abspath(config.out_dir)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  problem = ("is a file, not a directory" if not os.path.isdir(existing) else
             "is not writable" if not os.access(existing, os.W_OK | os.X_OK) else None)
  if problem:
    raise UserError(f"--config.out_dir={config.out_dir!r}: {existing!r} {problem}. Fix: choose a "
                    f"directory you can write, e.g. --config.out_dir=out.")


def restore_or_init(config, setup: Setup, checkpointer: Checkpointer) -> tuple[TrainState, int]:
  """The newest intact checkpoint restored into this mesh's shardings (a damaged one is skipped
  with a note), else GPT-2 weights or a fresh init."""

  def load(step):
    saved = checkpointer.read_meta(step)["architecture"]
    differing = architecture_mismatch(saved, ModelConfig.from_config(config).architecture())
    if differing:
      raise CheckpointError(
          f"run directory {checkpointer.directory!r} holds a different architecture ("
          + "; ".join(differing) + "). Fix: train into a new directory with "
          "--config.model_name=<new name>, or use the checkpoint's architecture.")
    return checkpointer.restore(step, setup.abstract_state.params, setup.abstract_state.opt_state)

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
    changed = changed_settings(checkpointer.read_meta(step)["config"], config.to_dict())
    if changed and jax.process_index() == 0:
      print(f"note: resuming step {step} with settings that differ from the run's: "
            + "; ".join(changed), file=sys.stderr, flush=True)
  step_array = jax.device_put(jnp.asarray(step, jnp.int32), sharding.replicated(setup.mesh))
  return TrainState(step=step_array, params=params, opt_state=opt_state), step


# Fields a resumed run is expected to change: no note for them.
RESUME_FIELDS = ("max_iters", "out_dir", "compilation_cache_dir", "cpu_devices", "mesh",
                 "distributed", "log_interval")


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


EVAL_SPLITS = ("train", "val")


def eval_windows(config, token_data, mesh: jax.sharding.Mesh, rows: slice) -> jax.Array:
  """The fixed evaluation batches of both splits, as one global array (2 * eval_iters, B, T+1)."""
  windows = [data_lib.eval_batch(token_data.split(split), config.seed, i, config.batch_size,
                                 config.block_size, rows)
             for split in EVAL_SPLITS for i in range(config.eval_iters)]
  return global_batch(np.concatenate(windows), mesh, config.batch_size)


def estimate_loss(setup: Setup, params, windows: jax.Array) -> dict[str, float]:
  """Mean loss of each split over its eval_iters batches (`windows` from eval_windows)."""
  losses = np.asarray(jax.device_get(setup.eval_step(params, windows)))
  return {split: float(mean) for split, mean in
          zip(EVAL_SPLITS, losses.reshape(len(EVAL_SPLITS), -1).mean(axis=1))}


class StopRequest:
  """Turns SIGINT and SIGTERM (Ctrl-C, preemption) into a flag the loop checks between steps.

  A signal landing inside the jitted step, after the state was donated, must not leave the loop
  with a deleted state to save. A second Ctrl-C aborts at once.
  """

  def __init__(self):
    self.requested, self.signal_name, self.previous = False, "", {}
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGINT, signal.SIGTERM):
        self.previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested, self.signal_name = True, signal.Signals(signum).name

  def restore(self) -> None:
    for sig, handler in self.previous.items():
      signal.signal(sig, handler)


def evaluate(setup: Setup, state: TrainState, windows: jax.Array) -> dict[str, float]:
  start = time.perf_counter()
  losses = estimate_loss(setup, state.params, windows)
  return dict(val_loss=losses["val"], eval_train_loss=losses["train"],
              eval_s=time.perf_counter() - start)


def save(checkpointer: Checkpointer, config, step: int, state: TrainState,
         losses: dict[str, float]) -> None:
  """Starts an asynchronous save of `state` at `step`, with the architecture, config and losses."""
  meta = dict(architecture=ModelConfig.from_config(config).architecture(),
              config=config.to_dict(), **losses)
  checkpointer.save(step, state, meta, losses.get("val_loss"))


@dataclasses.dataclass
class Run:
  """Everything a run needs before its first step."""
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  setup: Setup  # its train_step compiled ahead of time
  token_data: data_lib.TokenData
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
  token_data = data_lib.prepare(config)  # before JAX starts: its worker processes may fork
  sharding.use_cpu_devices(config.cpu_devices)
  cli.use_compilation_cache(config.compilation_cache_dir)
  sharding.maybe_initialize_distributed(config)
  mesh = sharding.make_mesh(config)
  setup = build(config, mesh)
  compile_start = time.perf_counter()
  with plan.explain_out_of_memory(config):
    compiled_step = compile_train_step(setup, config)
  step_memory = plan.ensure_fits(config, compiled_step)
  setup = dataclasses.replace(setup, train_step=compiled_step)
  first_record = dict(compile_s=time.perf_counter() - compile_start,
                      step_memory_bytes=step_memory)  # per device, as gptjax.plan reports it
  # Nothing above wrote into the run directory: a config that fails leaves it as it was.
  lock = RunLock(run_directory(config)).acquire() if jax.process_index() == 0 else None
  try:
    checkpointer = Checkpointer(run_directory(config), keep=config.keep_checkpoints)
    with mesh_context(mesh), plan.explain_out_of_memory(config):
      state, start_step = restore_or_init(config, setup, checkpointer)
    data_lib.record_run_data(run_directory(config), token_data, resuming=start_step > 0,
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
          f"({run.token_data.tokenizer.name}) | run dir {run_directory(config)}"
          + (f" | resuming from step {run.start_step}" if run.start_step else ""))


def train(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Trains (or resumes) the run `config` describes. Returns the last step's record."""
  run = start(config)
  is_main = jax.process_index() == 0
  say = functools.partial(print, flush=True) if is_main else (lambda *a, **k: None)
  setup, mesh, checkpointer, state, step = (run.setup, run.mesh, run.checkpointer, run.state,
                                            run.start_step)
  if step >= config.max_iters:
    say(f"{run_directory(config)} is already trained to step {step} >= "
        f"max_iters={config.max_iters}. Raise --config.max_iters to train on.")
    checkpointer.close()
    if run.lock:
      run.lock.release()
    return {"step": step}
  if is_main:
    write_atomically(os.path.join(run_directory(config), "config.json"), config.to_json(indent=2))
  say(banner(run))
  if device_peak_flops() is None:
    say(f"MFU: not reported, the peak FLOP/s of {jax.devices()[0].device_kind!r} is unknown.")

  rows = sharding.process_batch_rows(mesh, config.batch_size)
  progress = tqdm(total=config.max_iters, initial=step, unit="step", mininterval=1.0,
                  disable=None if is_main else True,  # None: no bar when stdout is not a terminal
                  dynamic_ncols=True, file=sys.stdout)
  writer = MetricsWriter(run_directory(config), is_main, resume_step=step)
  log = Recorder(config, writer, progress, step, run.first_record, checkpointer.latest_step)
  stop = StopRequest()  # Ctrl-C / SIGTERM: finish the step, save, then stop
  wait = jax.block_until_ready if one_step_in_flight() else (lambda tree: tree)
  next_windows = data_lib.Prefetcher(
      lambda index: data_lib.train_batch(run.token_data.train, config.seed, index,
                                         config.grad_accum_steps, config.batch_size,
                                         config.block_size, rows),
      stop=config.max_iters, depth=4 if monitor.host_runs_ahead() else 0)
  finished = False
  try:
    with mesh_context(mesh), plan.explain_out_of_memory(config):
      evaluation_windows = eval_windows(config, run.token_data, mesh, rows)
      while step < config.max_iters and not stop.requested:
        batch = global_batch(next_windows(step), mesh, config.batch_size)  # as the last step runs
        state, metrics = setup.train_step(wait(state), batch)
        step += 1
        evaluating = step % config.eval_interval == 0 or step == config.max_iters
        saving = evaluating or bool(config.checkpoint_interval
                                    and step % config.checkpoint_interval == 0)
        record = log.step_done(step, metrics, read_now=saving)
        if evaluating:
          record.update(evaluate(setup, wait(state), evaluation_windows))
        if saving:
          save(checkpointer, config, step, state,
               {k: record[k] for k in ("train_loss", "val_loss") if k in record})
          writer.plot(min_interval_s=60)  # a plot costs ~0.5 s: refreshed at most once a minute
        if record:
          log.write(record)
      log.flush()
    if stop.requested and step < config.max_iters:
      stop_and_save(stop, checkpointer, config, step, state, log.last_metrics, run.start_step, say)
    checkpointer.close()  # waits for the last save to commit, still holding signals
    finished = True
  finally:
    progress.close()
    close_all([next_windows.close, checkpointer.close, writer.close, stop.restore]
              + ([run.lock.release] if run.lock else []), raising=finished)
  if stop.requested:
    say(f"{stop.signal_name} after the last step: the run is complete, nothing to resume.")
  say(f"done: step {step}, val loss {log.last.get('val_loss', float('nan')):.4f}; "
      f"checkpoints in {checkpointer.directory}")
  return log.last


def close_all(closers, raising: bool) -> None:
  """Calls every closer. With `raising`, the first error is raised after all have run; without
  (an error is on its way out already), errors are dropped: the first one is the one to report."""
  errors = []
  for close in closers:
    try:
      close()
    except Exception as e:
      errors.append(e)
  if errors and raising:
    raise errors[0]


def stop_and_save(stop: StopRequest, checkpointer: Checkpointer, config, step: int, state,
                  metrics, start_step: int, say) -> None:
  """After a signal, between two steps (`state` is whole, never a donated buffer): saves the step
  unless it is saved already or its loss is not finite, says so, and stops."""
  loss = float(metrics["loss"]) if step > start_step else math.nan
  saved = math.isfinite(loss)
  if saved and checkpointer.latest_step() != step:
    save(checkpointer, config, step, state, dict(train_loss=loss))
  checkpointer.wait()  # "saved" only once it is committed (a second Ctrl-C here aborts)
  say(f"\n{stop.signal_name} at step {step}: "
      + ("checkpoint saved" if saved else f"loss {loss} not saved, the last checkpoint kept")
      + ". Run the same command to resume.")
  raise KeyboardInterrupt


def main(argv) -> None:
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments {argv[1:]}; fields are set as --config.<field>=<value>.")
  config = flags.FLAGS.config
  if config is None:
    raise UserError("--config is required, e.g. --config=configs/tiny_char.py.")
  if not config.model_name:  # the preset's file name, as for JSON presets
    path = config_flags.get_config_filename(flags.FLAGS["config"]).split(":")[-1]
    config.model_name = os.path.splitext(os.path.basename(path))[0]
  try:
    train(config)
  except KeyboardInterrupt:  # train() has saved a checkpoint and said so
    sys.exit(130)  # 128 + SIGINT, as a shell reports an interrupted command


def define_flags() -> None:
  cli.define_config_flag("Preset to train")


def cli_main() -> None:
  """`python -m gptjax.train` and the gptjax-train console script."""
  cli.entry_point(main, define_flags, __doc__, takes_config=True)


if __name__ == "__main__":
  cli_main()
