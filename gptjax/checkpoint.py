"""Orbax checkpoints of a run: save (async), keep the last N, the best by val loss and every run's
end, restore.

A checkpoint holds three items: `params`, `opt_state` (Orbax StandardSave, sharded arrays) and
`meta` (JSON: the resolved config and losses); Orbax's `metrics` item holds the val loss, so the
best step is known again after a resume, and the run's marks (`RunEnds`): the max_iters it was
trained toward and a fingerprint of the settings that shaped it. No checkpoint is lost by
accident: the one a run ended with (step == max_iters) and the last one before a change of
settings are kept for good, however far and however differently the run is continued. Restoring takes an abstract target whose leaves carry the
*target* shardings, so a checkpoint written on one mesh restores onto any other. A step that does
not restore (a truncated or overwritten file) is skipped for the newest one that does, and moved
aside to `<step>.damaged`. `load_run` is what the tools that read a finished run (sample, convert,
benchmarks) start from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import math
import os
import shutil
import sys
from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from gptjax import files, store
from gptjax.config import ARCHITECTURE_OPTIONS, ModelConfig, normalize
from gptjax.model_config import option_default
from gptjax.errors import CheckpointError, disk_full, disk_full_error
from gptjax.model import GPT
from gptjax.params import abstract_params, to_layout

UNFINISHED_SUFFIX = ".orbax-checkpoint-tmp"  # Orbax's name for a save still being written


def note(message: str) -> None:
  """One line on stderr, from process 0 only."""
  if jax.process_index() == 0:
    print(f"note: {message}", file=sys.stderr, flush=True)


def metric_val_loss(metrics) -> float:
  """The val loss in a step's metrics; infinite (the worst) for a step saved without one."""
  return metrics.get("val_loss", math.inf)


@dataclasses.dataclass
class RunEnds(checkpoint_managers.PreservationPolicy):
  """Preserves for good each checkpoint that ended a run (its step is the max_iters it was trained
  toward) and each that is the last of its settings (the next one was trained with others): the
  checkpoints a continued run would otherwise rotate away. Both marks are in the step's metrics,
  so a resumed run knows them again."""

  def should_preserve(self, checkpoints, *, context) -> list[bool]:
    order = sorted(range(len(checkpoints)), key=lambda i: checkpoints[i].step)
    keep = [False] * len(checkpoints)
    for position, index in enumerate(order):
      marks = checkpoints[index].metrics or {}
      after = (checkpoints[order[position + 1]].metrics or {}) if position + 1 < len(order) else {}
      keep[index] = marks.get("max_iters") == checkpoints[index].step or (
          "settings" in marks and "settings" in after and marks["settings"] != after["settings"])
    return keep


class Checkpointer:
  """A run's checkpoints under `<run_dir>/checkpoints/`."""

  def __init__(self, run_dir: str, keep: int = 3, read_only: bool = False):
    self.directory = store.absolute(os.path.join(run_dir, "checkpoints"))
    self.read_only = read_only
    self.closed = False
    self.in_flight = None  # the step of the save started last, until it is known committed
    if not read_only:
      self.remove_unfinished()
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=keep),
        checkpoint_managers.BestN(get_metric_fn=metric_val_loss,
                                  reverse=True,
                                  n=1,
                                  keep_checkpoints_without_metrics=False),
        RunEnds(),
    ])
    # best_fn is what makes Orbax write each step's metrics to disk (and read them back); the
    # preservation policy alone keeps them in memory only, so a resumed run forgot its best step.
    # In a bucket Orbax writes each step in place and commits it with commit_success.txt last; a
    # save that a kill cut short lacks that file, is never listed, and is deleted here on opening.
    options = ocp.CheckpointManagerOptions(best_fn=metric_val_loss,
                                           cleanup_tmp_directories=store.is_url(self.directory) and
                                           not read_only,
                                           best_mode="min",
                                           preservation_policy=policy,
                                           read_only=read_only,
                                           create=not read_only,
                                           enable_async_checkpointing=not read_only)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def remove_unfinished(self) -> None:
    """Deletes the folders of saves that a kill interrupted (never restorable), and says so. (In a
    bucket Orbax does that itself: cleanup_tmp_directories.)"""
    if store.is_url(self.directory):
      return
    unfinished = sorted(glob.glob(os.path.join(self.directory, f"*{UNFINISHED_SUFFIX}*")))
    if unfinished and jax.process_index() == 0:  # Orbax never lists them: they only take space
      note(f"removing {len(unfinished)} unfinished checkpoint save(s) an interrupted run left in "
           f"{self.directory}: " + ", ".join(os.path.basename(p) for p in unfinished))
      for path in unfinished:
        shutil.rmtree(path)

  def preempted(self, step: int) -> bool:
    """In a multi-process run: whether JAX's preemption service (SIGTERM to any process) chose
    `step` as the one every process saves before stopping. Every process asks at every step."""
    return jax.process_count() > 1 and self.manager.reached_preemption(step)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    """The kept step with the lowest val loss (None when no checkpoint has one)."""
    step = self.manager.best_step()
    return step if step is not None and self.val_loss(step) is not None else None

  def val_loss(self, step: int) -> float | None:
    metrics = self.manager.metrics(step)
    return metrics.get("val_loss") if metrics else None

  def steps_to_try(self, which: str = "latest") -> list[int]:
    """Every step, newest first; for "best", those with a val loss first, lowest first."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    if which != "best":
      return steps
    losses = {step: self.val_loss(step) for step in steps}
    return (sorted((s for s in steps if losses[s] is not None), key=losses.get) +
            [s for s in steps if losses[s] is None])

  def save(self,
           step: int,
           state,
           meta: dict[str, Any],
           val_loss: float | None = None,
           marks: dict[str, int] | None = None) -> None:
    """Starts an asynchronous save of `state` (params, opt_state) and `meta` at `step`, once the
    previous save has committed and the disk has room for this one (a DiskFullError if not).
    `marks`: the run's max_iters and settings fingerprint (RunEnds), kept with the val loss."""
    self.wait()
    self.check_space(step, state)
    args = ocp.args.Composite(params=ocp.args.StandardSave(state.params),
                              opt_state=ocp.args.StandardSave(state.opt_state),
                              meta=ocp.args.JsonSave(meta))
    metrics = dict(marks or {}, **({} if val_loss is None else {"val_loss": float(val_loss)}))
    self.in_flight = step
    with self.failed_save_as_error():
      self.manager.save(step, args=args, metrics=metrics or None, force=True)

  def check_space(self, step: int, state) -> None:
    """A DiskFullError, before anything is written, when the disk lacks the bytes this process
    writes for the checkpoint (its shards of params and opt_state, plus 256 KiB): a save that ran out
    of space midway would fail in Orbax's background threads instead. A bucket has no disk to
    fill (its limits are quotas, which fail the save itself): nothing to check."""
    if store.is_url(self.directory):
      return
    needed = 2**18 + sum(shard.data.nbytes
                         for leaf in jax.tree.leaves((state.params, state.opt_state))
                         if isinstance(leaf, jax.Array)
                         for shard in leaf.addressable_shards if shard.replica_id == 0)
    stat = os.statvfs(self.directory)
    if stat.f_bavail * stat.f_frsize < needed:
      raise disk_full_error(
          self.directory, f"saving checkpoint step {step}, which needs "
          f"{needed / 2**20:,.1f} MiB", self.resume_hint())

  def resume_hint(self) -> str:
    latest = self.manager.latest_step()
    return (f"it resumes from checkpoint step {latest}, the last one saved."
            if latest is not None else "no checkpoint was saved yet, so it starts from step 0.")

  @contextlib.contextmanager
  def failed_save_as_error(self):
    """Turns Orbax's failure to write a checkpoint on a full disk into a DiskFullError."""
    try:
      yield
    except Exception as e:
      if not disk_full(e):
        raise
      step, self.in_flight = self.in_flight, None
      self.manager.reload()  # the failed save is not a checkpoint
      raise disk_full_error(self.directory, f"saving checkpoint step {step}",
                            self.resume_hint()) from None

  def read_meta(self, step: int) -> dict[str, Any]:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step: int, abstract_params, abstract_opt_state=None):
    """(params, opt_state or None) at `step`, laid out as the abstract targets' shardings say."""
    items = dict(params=ocp.args.StandardRestore(abstract_params))
    if abstract_opt_state is not None:
      items["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored["params"], restored.get("opt_state") if abstract_opt_state is not None else None

  def first_intact(self, steps: list[int], load: Callable[[int], Any]) -> tuple[int, Any] | None:
    """(step, load(step)) for the first of `steps` that loads; None when there are no steps.

    A step whose files do not load is damaged: it is skipped with a note on stderr and, unless
    read-only, moved aside to `<step>.damaged` (kept to look at, out of Orbax's way: a later save
    may reuse its number). A CheckpointError from `load` and running out of memory are not damage
    and pass through. When every step is damaged, nothing is moved and a CheckpointError says so.
    """
    damaged = []
    for step in steps:
      loaded, reason = try_load(step, load)
      if reason is not None:
        damaged.append((step, reason))
        continue
      for bad_step, bad_reason in damaged:
        self.set_aside(bad_step, bad_reason, instead=step)
      return step, loaded
    if damaged:
      run_dir = os.path.dirname(self.directory)
      name = os.path.basename(run_dir)
      raise CheckpointError(
          f"no checkpoint in {self.directory!r} can be read (" +
          "; ".join(f"step {step}: {reason}" for step, reason in damaged) + "). Fix: move "
          f"{run_dir!r} away and train again, or train a new run beside it (`python -m "
          f"gptjax.train ... --config.model_name={files.free_name(os.path.dirname(run_dir), name)}`)."
      )
    return None

  def set_aside(self, step: int, reason: str, instead: int) -> None:
    """Notes that `step` is damaged and, unless read-only, renames it to `<step>.damaged`."""
    path = os.path.join(self.directory, str(step))
    kept = "left in place"
    if not self.read_only:
      target, n = f"{path}.damaged", 1
      while store.exists(target):
        target, n = f"{path}.damaged{n}", n + 1
      if jax.process_index() == 0:
        store.rename(path, target)
      if jax.process_count() > 1:  # every process lists the steps again only after the rename
        multihost_utils.sync_global_devices(f"gptjax: checkpoint step {step} set aside")
      self.manager.reload()
      kept = f"moved aside to {target}"
    note(f"checkpoint step {step} in {self.directory} is damaged ({reason}); using step "
         f"{instead} instead, the damaged one {kept}.")

  def wait(self) -> None:
    """Waits for the save in flight to commit (a DiskFullError if the disk filled meanwhile)."""
    with self.failed_save_as_error():
      self.manager.wait_until_finished()
    self.in_flight = None

  def close(self) -> None:
    """Waits for the last save to commit, then closes (again: nothing)."""
    if not self.closed:
      self.closed = True
      try:
        self.wait()
      finally:
        self.manager.close()


def try_load(step: int, load: Callable[[int], Any]) -> tuple[Any, str | None]:
  """(load(step), None), or (None, why) when the step's files are damaged."""
  try:
    return load(step), None
  except CheckpointError:
    raise
  except Exception as e:  # Orbax, TensorStore and json raise many types for a bad file
    if "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower():
      raise
    while e.__cause__ is not None:  # the root cause names the file; its wrappers do not
      e = e.__cause__
    return None, f"{type(e).__name__}: {(str(e).strip() or '?').splitlines()[0][:300]}"


def open_run(run_dir: str) -> Checkpointer:
  """A run's checkpoints, read-only; a CheckpointError when it has none."""
  directory = os.path.join(run_dir, "checkpoints")
  if not store.isdir(directory):
    raise CheckpointError(f"run directory {run_dir!r} holds no checkpoints (no {directory}). Fix: "
                          f"pass the right --run_dir, or train first (`python -m gptjax.train "
                          f"--config=<preset>`).")
  checkpointer = Checkpointer(run_dir, read_only=True)
  if checkpointer.latest_step() is None:
    raise CheckpointError(f"run directory {run_dir!r} holds no finished checkpoint. Fix: train "
                          f"until the first checkpoint is saved, or pass another --run_dir.")
  return checkpointer


def architecture_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """'field: saved X, now Y' for every architecture field that differs. A checkpoint saved before
  an architecture option existed has its default (GPT-2's)."""
  saved = {
      k: saved.get(k,
                   option_default(k) if k in ARCHITECTURE_OPTIONS else None) for k in current
  }
  return [
      f"{k}: checkpoint has {saved[k]!r}, config has {v!r}" for k, v in current.items()
      if saved[k] != v
  ]


def load_run(run_dir: str, which: str = "latest"):
  """(model, params, config, step, val_loss or None) from a run directory's latest or best
  checkpoint ("best": the lowest val loss; the latest when none has one), or the step `which`
  names ("1500"). A damaged step is skipped for the next one, with a note (a named step is not).
  The model and params are unrolled, whatever layout the run trained in (scan_layers), as the
  sampler and GPT-2 export read them; `config` is the run's."""
  checkpointer = open_run(run_dir)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])

  def load(step):
    config = normalize(ml_collections.ConfigDict(checkpointer.read_meta(step)["config"]))
    saved = ModelConfig.from_config(config)  # the layout the run saved
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                            nn.meta.unbox(abstract_params(saved)))
    params = to_layout(checkpointer.restore(step, abstract)[0], scan_layers=False)
    return GPT(dataclasses.replace(saved, scan_layers=False)), params, config

  if which.isdigit():  # one step: that one or an error naming the steps there are
    steps = sorted(checkpointer.manager.all_steps())
    if int(which) not in steps:
      checkpointer.close()
      raise CheckpointError(f"run directory {run_dir!r} has no checkpoint at step {which} (it has "
                            f"{', '.join(map(str, steps))}). Fix: --checkpoint=<one of them>, "
                            f"latest or best.")
    step = int(which)
    model, params, config = load(step)
  else:
    step, (model, params, config) = checkpointer.first_intact(checkpointer.steps_to_try(which),
                                                              load)
  loss = checkpointer.val_loss(step)
  checkpointer.close()
  return model, params, config, step, loss
