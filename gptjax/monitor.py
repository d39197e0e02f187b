"""What a run reports: MFU against a table of device peaks, metrics.jsonl, TensorBoard, a loss plot."""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import jax

# Dense bf16/fp16 matmul peak FLOP/s per device (vendor datasheets; GPUs without sparsity). Keys are
# matched as lower-case substrings of jax's device_kind, most specific first.
PEAK_FLOPS = (
    ("h200", 989e12), ("h100", 989e12), ("gh200", 989e12), ("b200", 2250e12),
    ("a100", 312e12), ("a10g", 125e12), ("a10", 125e12), ("l40s", 362e12), ("l4", 121e12),
    ("v100", 125e12), ("t4", 65e12), ("rtx 4090", 165e12), ("rtx 3090", 71e12),
    ("tpu v6 lite", 918e12), ("tpu v6e", 918e12), ("tpu v5p", 459e12), ("tpu v5 lite", 197e12),
    ("tpu v5e", 197e12), ("tpu v4", 275e12), ("tpu v3", 123e12), ("tpu v2", 45e12),
)


def device_peak_flops(device=None) -> float | None:
  """Peak FLOP/s of one device, or None when it is not in the table (CPUs among them)."""
  kind = (device or jax.devices()[0]).device_kind.lower()
  return next((peak for key, peak in PEAK_FLOPS if key in kind), None)


def mfu(flops_per_second: float, num_devices: int, peak: float | None) -> float | None:
  """Model FLOPs utilisation: achieved model FLOP/s over the devices' summed peak (None if unknown)."""
  return None if peak is None else flops_per_second / (peak * num_devices)


class MetricsWriter:
  """metrics.jsonl + TensorBoard events + loss.png in the run directory (process 0 only)."""

  def __init__(self, run_dir: str, enabled: bool, resume_step: int = 0):
    self.enabled = enabled
    self.path = os.path.join(run_dir, "metrics.jsonl")
    self.plot_path = os.path.join(run_dir, "loss.png")
    self.records: list[dict[str, Any]] = []
    self.last_plot = time.monotonic()
    if not enabled:
      return
    if os.path.exists(self.path):  # Resuming: keep what led up to the checkpoint, drop the rest.
      with open(self.path) as f:
        self.records = [r for r in map(json.loads, filter(str.strip, f)) if r["step"] <= resume_step]
    with open(self.path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in self.records)
    # tensorboardX takes ~1.5 s to import (it loads torch when installed): done in the background,
    # while the train step compiles, and waited for at the first write.
    self._tensorboard_ready = threading.Thread(
        target=self._open_tensorboard, args=(os.path.join(run_dir, "tensorboard"), resume_step + 1),
        daemon=True)
    self._tensorboard_ready.start()

  def _open_tensorboard(self, directory: str, purge_step: int) -> None:
    self._tensorboard, self._tensorboard_error = None, None
    try:
      from tensorboardX import SummaryWriter
      self._tensorboard = SummaryWriter(directory, purge_step=purge_step)
    except Exception as e:  # raised again, on the caller's thread, at the first use
      self._tensorboard_error = e

  @property
  def tensorboard(self):
    self._tensorboard_ready.join()
    if self._tensorboard_error is not None:
      raise self._tensorboard_error
    return self._tensorboard

  def write(self, record: dict[str, Any]) -> None:
    if not self.enabled:
      return
    self.records.append(record)
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    for key, value in record.items():
      if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
        self.tensorboard.add_scalar(key, value, record["step"])

  def plot(self, min_interval_s: float = 0.0) -> None:
    """Writes loss.png: train loss per logged step, train/val loss per evaluation.

    Skipped when the last plot is less than `min_interval_s` old.
    """
    if not self.enabled or not self.records:
      return
    if time.monotonic() - self.last_plot < min_interval_s:
      return
    self.last_plot = time.monotonic()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, style in (("train_loss", "-"), ("eval_train_loss", "o--"), ("val_loss", "o-")):
      points = [(r["step"], r[key]) for r in self.records if r.get(key) is not None]
      if points:
        ax.plot(*zip(*points), style, label=key.replace("_", " "), markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title(os.path.basename(os.path.dirname(self.path)))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(self.plot_path, dpi=100)
    plt.close(fig)

  def close(self) -> None:
    if self.enabled:
      self.plot()
      self.tensorboard.close()
