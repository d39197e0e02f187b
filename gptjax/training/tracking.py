"""--config.wandb_project: the run's records in Weights & Biases, from process 0.

Every record written to metrics.jsonl is logged to W&B at its step, with the resolved config, the
exact parameter count and the step's memory (the planner's figure) in the run's config and summary.
The W&B run's id is kept in <run dir>/wandb_id, so a resumed run continues the same W&B run (W&B
keeps the rows of steps above the run's last one: the steps after the checkpoint, logged again, are
not doubled). wandb is optional (pip install wandb, or the wandb extra): without it, or when W&B
cannot start (no API key, no network), the run trains on after one line saying why.
WANDB_MODE=offline logs into <local W&B dir>/wandb/offline-run-*, for `wandb sync` later. W&B's own files stay on
local disk (WANDB_DIR, default the current directory) even when the run directory is in a bucket.
"""

from __future__ import annotations

import os
import sys
import uuid
from typing import Any

from gptjax import store


class Tracker:
  """Logs records to one W&B run; does nothing when W&B is off or could not start."""

  def __init__(self, config, run_dir: str, enabled: bool, summary: dict[str, Any]):
    self.run = None
    if not (enabled and config.wandb_project):
      return
    try:
      import wandb
    except ImportError:
      _note("wandb is not installed, so this run is not tracked in W&B (pip install "
            "wandb adds it); training goes on.")
      return
    id_path = store.join(run_dir, "wandb_id")
    run_id = (store.read_text(id_path).strip()
              if store.isfile(id_path) else "") or uuid.uuid4().hex[:12]
    try:
      self.run = wandb.init(project=config.wandb_project,
                            entity=config.wandb_entity or None,
                            name=config.wandb_run_name or os.path.basename(run_dir.rstrip("/")),
                            tags=[t.strip() for t in config.wandb_tags.split(",") if t.strip()],
                            id=run_id,
                            resume="allow",
                            dir=os.environ.get("WANDB_DIR") or None,
                            config=config.to_dict(),
                            settings=wandb.Settings(init_timeout=30, console="off", silent=True))
    except Exception as e:  # no API key, no network, a W&B outage: the run matters more
      _note(f"W&B did not start ({type(e).__name__}: {str(e).strip().splitlines()[0][:200]}), so "
            f"this run is not tracked; training goes on. WANDB_MODE=offline logs locally.")
      return
    store.write_text(id_path, run_id + "\n")
    self.run.summary.update(summary)

  def log(self, record: dict[str, Any]) -> None:
    if self.run is not None:
      self.run.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

  def close(self) -> None:
    if self.run is not None:
      run, self.run = self.run, None
      run.finish()


def _note(message: str) -> None:
  print(f"note: {message}", file=sys.stderr, flush=True)
