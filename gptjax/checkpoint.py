"""Orbax checkpoints of a run: save (async), keep the last N plus the best by val loss, restore.

A checkpoint holds three items: `params`, `opt_state` (Orbax StandardSave, sharded arrays) and
`meta` (JSON: the resolved config and losses). Restoring takes an abstract target whose leaves carry
the *target* shardings, so a checkpoint written on one mesh restores onto any other. `load_run` is
what the tools that read a finished run (sample, convert, benchmarks) start from.
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from gptjax.config import ModelConfig
from gptjax.errors import CheckpointError
from gptjax.model import GPT
from gptjax.params import abstract_params


class Checkpointer:
  """A run's checkpoints under `<run_dir>/checkpoints/`."""

  def __init__(self, run_dir: str, keep: int = 3, read_only: bool = False):
    self.directory = os.path.abspath(os.path.join(run_dir, "checkpoints"))
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=keep),
        checkpoint_managers.BestN(get_metric_fn=lambda m: m["val_loss"], reverse=True, n=1,
                                  keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, read_only=read_only,
                                           create=not read_only,
                                           enable_async_checkpointing=not read_only)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    """The kept step with the lowest val loss (None when no checkpoint has one)."""
    scored = [(m["val_loss"], step) for step in self.manager.all_steps()
              if (m := self.manager.metrics(step)) and m.get("val_loss") is not None]
    return min(scored)[1] if scored else None

  def save(self, step: int, state, meta: dict[str, Any], val_loss: float | None = None) -> None:
    """Starts an asynchronous save of `state` (params, opt_state) and `meta` at `step`."""
    args = ocp.args.Composite(params=ocp.args.StandardSave(state.params),
                              opt_state=ocp.args.StandardSave(state.opt_state),
                              meta=ocp.args.JsonSave(meta))
    metrics = None if val_loss is None else {"val_loss": float(val_loss)}
    self.manager.save(step, args=args, metrics=metrics, force=True)

  def read_meta(self, step: int) -> dict[str, Any]:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step: int, abstract_params, abstract_opt_state=None):
    """(params, opt_state or None) at `step`, laid out as the abstract targets' shardings say."""
    items = dict(params=ocp.args.StandardRestore(abstract_params))
    if abstract_opt_state is not None:
      items["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored["params"], restored.get("opt_state") if abstract_opt_state is not None else None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def find_step(run_dir: str, which: str = "latest") -> tuple["Checkpointer", int]:
  """Opens a run's checkpoints read-only and picks the latest or best step."""
  directory = os.path.join(run_dir, "checkpoints")
  if not os.path.isdir(directory):
    raise CheckpointError(f"run directory {run_dir!r} holds no checkpoints (no {directory}). Fix: "
                          f"train first (python -m gptjax.train ...) or pass the right --run_dir.")
  checkpointer = Checkpointer(run_dir, read_only=True)
  step = checkpointer.best_step() if which == "best" else None
  step = checkpointer.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(f"run directory {run_dir!r} holds no finished checkpoint. Fix: train "
                          f"until the first checkpoint is saved, or pass another --run_dir.")
  return checkpointer, step


def architecture_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """'field: saved X, now Y' for every architecture field that differs."""
  return [f"{k}: checkpoint has {saved.get(k)!r}, config has {v!r}"
          for k, v in current.items() if saved.get(k) != v]


def load_run(run_dir: str, which: str = "latest"):
  """(model, params, config, step) from a run directory's latest or best checkpoint."""
  checkpointer, step = find_step(run_dir, which)
  config = ml_collections.ConfigDict(checkpointer.read_meta(step)["config"])
  model = GPT(ModelConfig.from_config(config))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                          nn.meta.unbox(abstract_params(model.config)))
  params, _ = checkpointer.restore(step, abstract)
  checkpointer.close()
  return model, params, config, step
