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

from gptjax import cli, convert, plan
from gptjax import data as data_lib
from gptjax import sharding
from gptjax.checkpoint import Checkpointer, architecture_mismatch
from gptjax.config import ModelConfig, validate
from gptjax.errors import CheckpointError, DivergenceError, UserError
from gptjax.monitor import MetricsWriter, device_peak_flops, mfu
from gptjax.params import count_params, flops_per_token
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


def restore_or_init(config, setup: Setup, checkpointer: Checkpointer) -> tuple[TrainState, int]:
  """The latest checkpoint restored into this mesh's shardings, else GPT-2 weights or a fresh init."""
  step = checkpointer.latest_step()
  if step is None and not config.init_from:
    return setup.init(jax.random.key(config.seed)), 0
  if step is None:  # fine-tuning: GPT-2's weights instead of a random init
    params = convert.init_params_from(config, setup.abstract_state.params)
    opt_shardings = jax.tree.map(lambda a: a.sharding, setup.abstract_state.opt_state)
    opt_state = jax.jit(setup.tx.init, out_shardings=opt_shardings)(params)
    step = 0
  else:
    saved = checkpointer.read_meta(step)["architecture"]
    differing = architecture_mismatch(saved, ModelConfig.from_config(config).architecture())
    if differing:
      raise CheckpointError(
          f"run directory {checkpointer.directory!r} holds a different architecture ("
          + "; ".join(differing) + "). Fix: train into a new directory with "
          "--config.model_name=<new name>, or use the checkpoint's architecture.")
    params, opt_state = checkpointer.restore(step, setup.abstract_state.params,
                                             setup.abstract_state.opt_state)
  step_array = jax.device_put(jnp.asarray(step, jnp.int32), sharding.replicated(setup.mesh))
  return TrainState(step=step_array, params=params, opt_state=opt_state), step


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


def train(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Trains (or resumes) the run `config` describes. Returns the last step's losses."""
  if config.init_from:  # the architecture comes from the checkpoint; differences are noted on stderr
    convert.apply_hf_architecture(config, config.init_from)
  validate(config)
  sharding.use_cpu_devices(config.cpu_devices)
  cli.use_compilation_cache(config.compilation_cache_dir)
  sharding.maybe_initialize_distributed(config)
  mesh = sharding.make_mesh(config)
  is_main = jax.process_index() == 0
  say = functools.partial(print, flush=True) if is_main else (lambda *a, **k: None)
  run_dir = run_directory(config)
  token_data = data_lib.prepare(config)
  setup = build(config, mesh)
  compile_start = time.perf_counter()
  with plan.explain_out_of_memory(config):
    compiled_step = compile_train_step(setup, config)
  step_memory = plan.ensure_fits(config, compiled_step)  # before any state is allocated
  setup = dataclasses.replace(setup, train_step=compiled_step)
  compile_seconds = time.perf_counter() - compile_start
  model_config = ModelConfig.from_config(config)
  checkpointer = Checkpointer(run_dir, keep=config.keep_checkpoints)
  with mesh_context(mesh), plan.explain_out_of_memory(config):
    state, start_step = restore_or_init(config, setup, checkpointer)
  if start_step >= config.max_iters:
    say(f"{run_dir} is already trained to step {start_step} >= max_iters={config.max_iters}. "
        f"Raise --config.max_iters to train on.")
    checkpointer.close()
    return {"step": start_step}
  if is_main:
    with open(os.path.join(run_dir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))
  writer = MetricsWriter(run_dir, is_main, resume_step=start_step)
  rows = sharding.process_batch_rows(mesh, config.batch_size)
  tokens_per_step = config.batch_size * config.grad_accum_steps * config.block_size
  flops_per_step = flops_per_token(model_config) * tokens_per_step
  peak = device_peak_flops()
  say(f"gptjax | {config.name}: {count_params(model_config).total:,} parameters | mesh "
      f"{dict(mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform} device(s), "
      f"{step_memory / 2**30:.2f} GiB each for the step | "
      f"{len(token_data.train):,} train / {len(token_data.val):,} val tokens "
      f"({token_data.tokenizer.name}) | run dir {run_dir}"
      + (f" | resuming from step {start_step}" if start_step else ""))
  if peak is None:
    say(f"MFU: not reported, the peak FLOP/s of {jax.devices()[0].device_kind!r} is unknown.")

  meta = lambda losses: dict(architecture=model_config.architecture(), config=config.to_dict(),
                             **losses)
  last_good = dict(step=start_step)
  progress = tqdm(total=config.max_iters, initial=start_step, unit="step", mininterval=1.0,
                  disable=None if is_main else True,  # None: no bar when stdout is not a terminal
                  dynamic_ncols=True, file=sys.stdout)
  timer_start, timer_step, step = time.perf_counter(), start_step, start_step
  stop = StopRequest()  # Ctrl-C / SIGTERM: finish the step, save, then stop
  wait = jax.block_until_ready if one_step_in_flight() else (lambda tree: tree)
  try:
    with mesh_context(mesh), plan.explain_out_of_memory(config):
      evaluation_windows = eval_windows(config, token_data, mesh, rows)
      while step < config.max_iters and not stop.requested:
        windows = data_lib.train_batch(token_data.train, config.seed, step, config.grad_accum_steps,
                                       config.batch_size, config.block_size, rows)
        batch = global_batch(windows, mesh, config.batch_size)  # made while the last step runs
        state, metrics = setup.train_step(wait(state), batch)
        step += 1
        progress.update(1)
        is_eval = step % config.eval_interval == 0 or step == config.max_iters
        is_save = is_eval or bool(config.checkpoint_interval
                                  and step % config.checkpoint_interval == 0)
        if not (is_save or step % config.log_interval == 0 or step == start_step + 1):
          continue
        train_loss = float(metrics["loss"])  # waits for the step: the timer covers whole steps
        if not math.isfinite(train_loss):
          raise DivergenceError(
              f"training loss became {train_loss} at step {step}; stopping without saving. The "
              f"last good checkpoint (step {checkpointer.latest_step()}) is intact. Fix: lower "
              f"--config.learning_rate, keep --config.grad_clip > 0, or use float32.")
        elapsed = time.perf_counter() - timer_start
        step_time = elapsed / (step - timer_step)
        tokens_per_second = tokens_per_step / step_time
        record = dict(step=step, train_loss=train_loss, lr=float(metrics["lr"]),
                      grad_norm=float(metrics["grad_norm"]), step_time_ms=1000 * step_time,
                      tokens_per_second=tokens_per_second,
                      mfu=mfu(flops_per_step / step_time, jax.device_count(), peak))
        if step == start_step + 1:
          record["compile_s"], record["first_step_s"] = compile_seconds, elapsed
          record["step_memory_bytes"] = step_memory  # per device, as gptjax.plan reports it
          record["programs_from_cache"] = cli.compilation_cache_hits()
        line = (f"step {step}: loss {train_loss:.4f}, lr {record['lr']:.2e}, "
                f"{record['step_time_ms']:.1f} ms/step, {tokens_per_second:,.0f} tok/s"
                + ("" if record["mfu"] is None else f", MFU {100 * record['mfu']:.1f}%")
                + (f" (compile: {record['programs_from_cache']} programs from the cache)"
                   if record.get("programs_from_cache") else ""))
        if is_eval:
          eval_start = time.perf_counter()
          losses = estimate_loss(setup, wait(state).params, evaluation_windows)
          record.update(val_loss=losses["val"], eval_train_loss=losses["train"],
                        eval_s=time.perf_counter() - eval_start)
          line += f" | eval: train {losses['train']:.4f}, val {losses['val']:.4f}"
        if is_main:
          progress.write(line)
        progress.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tokens_per_second:,.0f}")
        writer.write(record)
        if is_save:
          losses = {k: record[k] for k in ("train_loss", "val_loss") if k in record}
          checkpointer.save(step, state, meta(losses), record.get("val_loss"))
          writer.plot(min_interval_s=60)  # a plot costs ~0.5 s: refreshed at most once a minute
        last_good = record
        timer_start, timer_step = time.perf_counter(), step
    if stop.requested:  # between two steps: `state` is whole, never a donated buffer
      loss = float(metrics["loss"]) if step > start_step else math.nan
      saved = math.isfinite(loss)
      if saved and checkpointer.latest_step() != step:
        checkpointer.save(step, state, meta(dict(train_loss=loss)))
      say(f"\n{stop.signal_name} at step {step}: "
          + ("checkpoint saved" if saved else f"loss {loss} not saved, the last checkpoint kept")
          + ". Run the same command to resume.")
      raise KeyboardInterrupt
  finally:
    stop.restore()
    progress.close()
    checkpointer.close()
    writer.close()
  say(f"done: step {step}, val loss {last_good.get('val_loss', float('nan')):.4f}; "
      f"checkpoints in {checkpointer.directory}")
  return last_good


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
