"""The training loop: batch -> step -> log -> evaluate -> checkpoint, until max_iters or a signal.

  python -m gptjax.train --config=tiny_char --config.max_iters=200

Ctrl-C (SIGINT) and SIGTERM (preemption) finish the step in flight, save it, and stop; running the
same command again resumes from the latest checkpoint with the same batches and dropout masks.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import sys
import threading
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from gptjax import sharding, store
from gptjax.checkpoint import Checkpointer
from gptjax.config import ModelConfig
from gptjax.data import batches, dataset
from gptjax.data import tokenizer as tokenizer_lib
from gptjax.devices import peak_flops
from gptjax.errors import UserError
from gptjax.params import count_params
from gptjax.planner import fit
from gptjax.step import global_batch, mesh_context
from gptjax.training import metrics as metrics_lib
from gptjax.training import tracking
from gptjax.training.evaluate import WholeSplit, eval_windows, evaluate
from gptjax.training.metrics import MetricsWriter, Recorder
from gptjax.training.profile import Profiler
from gptjax.training.run import banner, run_directory, save, start


def one_step_in_flight() -> bool:
  """Whether the loop must wait for each step before dispatching the next: several CPU devices.

  XLA's CPU devices share one thread pool, and a device that runs ahead into the next program
  blocks a pool thread in that program's all-reduce. With as many pool threads as cores (2 here),
  two steps in flight deadlocked in jax 0.10.2 (XLA aborts after 40 s: "Expected 2 threads to join
  the rendezvous"). Waiting costs nothing measurable: the next batch is made while a step runs.
  """
  return jax.devices()[0].platform == "cpu" and jax.local_device_count() > 1


class StopRequest:
  """Turns SIGINT and SIGTERM (Ctrl-C, preemption) into a flag the loop checks between steps.

  A signal landing inside the jitted step, after the state was donated, must not leave the loop
  with a deleted state to save. A second Ctrl-C aborts at once. In a multi-process run SIGTERM is
  left to JAX: jax.distributed's preemption service catches it (a Python handler would replace
  its handler), and every process learns at the same step (`Checkpointer.preempted`), so all save
  that one step; a SIGTERM to one process that only it knew of would hang the others' save.
  """

  def __init__(self):
    self.requested, self.signal_name, self.previous = False, "", {}
    if threading.current_thread() is threading.main_thread():
      signals = (signal.SIGINT,) if jax.process_count() > 1 else (signal.SIGINT, signal.SIGTERM)
      for sig in signals:
        self.previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested, self.signal_name = True, signal.Signals(signum).name

  def restore(self) -> None:
    for sig, handler in self.previous.items():
      signal.signal(sig, handler)


def train(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Trains (or resumes) the run `config` describes. Returns the last step's record."""
  run = start(config, say=functools.partial(print, flush=True))
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
    store.write_text(os.path.join(run_directory(config), "config.json"), config.to_json(indent=2),
                     metrics_lib.RESUME_HINT)
  say(banner(run))
  if peak_flops() is None:
    say(f"MFU: not reported, the peak FLOP/s of {jax.devices()[0].device_kind!r} is unknown.")

  rows = sharding.process_batch_rows(mesh, config.batch_size)
  progress = tqdm(
      total=config.max_iters,
      initial=step,
      unit="step",
      mininterval=1.0,
      disable=None if is_main else True,  # None: no bar when stdout is not a terminal
      dynamic_ncols=True,
      file=sys.stdout)
  # W&B first: importing wandb parses source with `ast` (pydantic), and Python 3.11's ast is not
  # thread-safe ("AST constructor recursion depth mismatch") while MetricsWriter's background
  # thread imports tensorboardX (and torch, which parses source too).
  tracker = tracking.Tracker(
      config, run_directory(config), is_main,
      dict(parameters=count_params(ModelConfig.from_config(config)).total,
           step_memory_bytes=run.first_record["step_memory_bytes"]))
  writer = MetricsWriter(run_directory(config), is_main, resume_step=step)
  writer.tracker = tracker
  profiler = Profiler(config.profile_steps, run_directory(config), say)
  clock = CheckpointClock(config.checkpoint_minutes)
  log = Recorder(config, writer, progress, step, run.first_record, checkpointer.latest_step)
  stop = StopRequest()  # Ctrl-C / SIGTERM: finish the step, save, then stop
  wait = jax.block_until_ready if one_step_in_flight() else (lambda tree: tree)
  next_windows = batches.Prefetcher(lambda index: batches.train_batch(
      run.token_data.train, config.seed, index, config.grad_accum_steps, config.batch_size, config.
      block_size, rows),
                                    stop=config.max_iters,
                                    depth=4 if metrics_lib.host_runs_ahead() else 0)
  finished = False
  try:
    with mesh_context(mesh), fit.explain_out_of_memory(config):
      whole_val, evaluation_windows = None, None
      if config.eval_iters:
        evaluation_windows = eval_windows(config, run.token_data, mesh, rows)
      else:  # eval_iters=0: the whole validation split, exactly
        whole_val = WholeSplit(setup.model, run.token_data.val, run.token_data.tokenizer)
      val_tokens_per_byte = tokenizer_lib.val_tokens_per_byte(run.token_data)
      while step < config.max_iters and not stop.requested:
        batch = global_batch(next_windows(step), mesh, config.batch_size)  # as the last step runs
        profiler.before(step + 1)
        with profiler.annotation(step + 1):
          state, step_metrics = setup.train_step(wait(state), batch)
        step += 1
        profiler.after(step, state)
        if checkpointer.preempted(step):  # every process at the same step: all save it and stop
          stop.requested, stop.signal_name = True, "SIGTERM (preemption)"
        if run.lock is not None and getattr(run.lock, "lost", False):
          raise UserError(f"{run_directory(config)!r} was taken over by another training (its "
                          f"lease expired); this one stops without saving. Fix: let one training "
                          f"at a time write a run directory.")
        evaluating = step % config.eval_interval == 0 or step == config.max_iters
        saving = evaluating or bool(config.checkpoint_interval and
                                    step % config.checkpoint_interval == 0) or clock.due()
        record = log.step_done(step, step_metrics, read_now=saving)
        if evaluating:
          record.update(
              evaluate(setup, wait(state), evaluation_windows, val_tokens_per_byte, whole_val))
        if saving:
          losses = {k: record[k] for k in ("train_loss", "val_loss") if k in record}
          if writer.in_bucket:  # metrics.jsonl is rewritten there: up to this step, before saving
            log.write(record)
            record = None
            writer.before_checkpoint()
          save(checkpointer, config, step, state, losses)
          clock.saved()
          writer.plot(min_interval_s=60)  # a plot costs ~0.5 s: refreshed at most once a minute
        if record:
          log.write(record)
      log.flush()
    profiler.stop()
    if stop.requested and step < config.max_iters:
      writer.before_checkpoint()
      stop_and_save(stop, checkpointer, config, step, state, log.last_metrics, run.start_step, say)
    checkpointer.close()  # waits for the last save to commit, still holding signals
    finished = True
  finally:
    progress.close()
    close_all([
        next_windows.close, profiler.stop, checkpointer.close, writer.close, writer.tracker.close,
        stop.restore
    ] + ([run.lock.release] if run.lock else []),
              raising=finished)
  if stop.requested:
    say(f"{stop.signal_name} after the last step: the run is complete, nothing to resume.")
  say(f"done: step {step}, val loss {log.last.get('val_loss', float('nan')):.4f}; "
      f"checkpoints in {checkpointer.directory}")
  return log.last


class CheckpointClock:
  """checkpoint_minutes: whether that long has passed since the last save (or the start). In a
  multi-process run process 0's clock decides for all (one broadcast a step), so every process
  saves the same step."""

  def __init__(self, minutes: float):
    self.interval_s, self.last = 60.0 * minutes, time.monotonic()

  def due(self) -> bool:
    if not self.interval_s:
      return False
    due = time.monotonic() - self.last >= self.interval_s
    if jax.process_count() > 1:
      due = bool(multihost_utils.broadcast_one_to_all(np.int32(due)))
    return due

  def saved(self) -> None:
    self.last = time.monotonic()


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


def stop_and_save(stop: StopRequest, checkpointer: Checkpointer, config, step: int, state, metrics,
                  start_step: int, say) -> None:
  """After a signal, between two steps (`state` is whole, never a donated buffer): saves the step
  unless it is saved already or its loss is not finite, says so, and stops."""
  loss = float(metrics["loss"]) if step > start_step else math.nan
  saved = math.isfinite(loss)
  if saved and checkpointer.latest_step() != step:
    save(checkpointer, config, step, state, dict(train_loss=loss))
  checkpointer.wait()  # "saved" only once it is committed (a second Ctrl-C here aborts)
  say(f"\n{stop.signal_name} at step {step}: " +
      ("checkpoint saved" if saved else f"loss {loss} not saved, the last checkpoint kept") +
      ". Run the same command to resume.")
  raise KeyboardInterrupt


def train_loop_steps(config: ml_collections.ConfigDict) -> Callable[[int], float]:
  """gptjax's training one step per call, as gptjax.train's loop runs it: step(it) draws step it's
  batch from the config's corpus (data.train_batch), runs the compiled train step on it and waits
  for its loss, which it returns. The first call after this returns is already compiled.

  The config is validated and its CPU devices set up by the caller (before JAX starts); the token
  cache is written under config.out_dir.
  """
  mesh = sharding.make_mesh(config)
  config, setup, compiled = fit.compile_train_step(config, mesh)
  tokens = dataset.open_tokens(config).train
  rows = sharding.process_batch_rows(mesh, config.batch_size)
  with mesh_context(mesh):
    holder = {"state": setup.init(jax.random.key(config.seed))}

  def step(it: int) -> float:
    windows = batches.train_batch(tokens, config.seed, it, config.grad_accum_steps,
                                  config.batch_size, config.block_size, rows)
    holder["state"], step_metrics = compiled(holder["state"],
                                             global_batch(windows, mesh, config.batch_size))
    return float(step_metrics["loss"])

  return step
