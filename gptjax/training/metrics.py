"""What a run reports: the step records (log line, progress bar, metrics.jsonl, TensorBoard, MFU
against the device's peak) and a loss plot."""

from __future__ import annotations

import io
import json
import math
import os
import sys
import threading
import time
from typing import Any

import jax
from tqdm import tqdm

from gptjax import compile_cache, store
from gptjax.config import ModelConfig
from gptjax.devices import mfu, peak_flops
from gptjax.errors import DataError, DivergenceError, disk_full, disk_full_as_error
from gptjax.params import flops_per_token


def read_records(path: str) -> list[dict[str, Any]]:
  """The records of a metrics.jsonl. A torn last line (a write cut short by a kill or a full disk)
  is dropped with a note; an unreadable line before it is a DataError."""
  if store.is_url(path):
    text = store.read_bytes(path).decode("utf-8", errors="replace")
  else:
    with open(path, encoding="utf-8", errors="replace") as f:
      text = f.read()
  lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
  records = []
  for number, line in lines:
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as e:
      if number != lines[-1][0]:
        raise DataError(f"{path}, line {number}, is not a JSON record ({e}). Fix: delete or "
                        f"repair that line, then run again.") from e
      print(
          f"note: {path}: dropped its torn last line ({len(line.rstrip())} characters, an "
          f"interrupted write): {line.strip()[:60]!r}",
          file=sys.stderr)
  return records


RESUME_HINT = "it resumes from the last checkpoint saved."


class MetricsWriter:
  """metrics.jsonl + TensorBoard events + loss.png in the run directory (process 0 only).

  In a bucket, which has no appends (gcsfs's "a" mode silently overwrites), metrics.jsonl is
  rewritten whole from the records in memory: at most every REWRITE_S seconds (GCS takes about one
  write per second to an object), before each checkpoint save (`sync`) and at the end. A kill loses
  only records after the last checkpoint, which the resumed run drops and writes again anyway.
  """

  REWRITE_S = 5.0
  tracker = None  # training.tracking.Tracker: W&B gets every record too
  in_bucket = False  # the run directory is a gs:// URL

  def __init__(self, run_dir: str, enabled: bool, resume_step: int = 0):
    self.enabled = enabled
    self.path = os.path.join(run_dir, "metrics.jsonl")
    self.plot_path = os.path.join(run_dir, "loss.png")
    self.records: list[dict[str, Any]] = []
    self.last_plot = self.last_sync = time.monotonic()
    self.in_bucket = store.is_url(run_dir)
    if not enabled:
      return
    if store.exists(self.path):  # Resuming: keep what led up to the checkpoint, drop the rest.
      self.records = [r for r in read_records(self.path) if r["step"] <= resume_step]
    self.sync()
    # tensorboardX takes ~1.5 s to import (it loads torch when installed): done in the background,
    # while the train step compiles, and waited for at the first write.
    self._tensorboard_ready = threading.Thread(target=self._open_tensorboard,
                                               args=(os.path.join(run_dir,
                                                                  "tensorboard"), resume_step + 1),
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
    if self.tracker is not None:
      self.tracker.log(record)
    if self.in_bucket:
      if time.monotonic() - self.last_sync >= self.REWRITE_S:
        self.sync()
    else:
      with disk_full_as_error(self.path, "appending to metrics.jsonl", RESUME_HINT):
        with open(self.path, "a") as f:  # a cut line is dropped when the run resumes
          f.write(json.dumps(record) + "\n")
    for key, value in record.items():
      if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
        self.tensorboard.add_scalar(key, value, record["step"])

  def sync(self) -> None:
    """Writes metrics.jsonl whole from the records (locally: atomically)."""
    if self.enabled:
      self.last_sync = time.monotonic()
      store.write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records), RESUME_HINT)

  def before_checkpoint(self) -> None:
    """In a bucket, writes metrics.jsonl now: a checkpoint never gets ahead of its records."""
    if self.in_bucket:
      self.sync()

  def plot(self, min_interval_s: float = 0.0) -> None:
    """Writes loss.png: train loss per logged step, train/val loss per evaluation, and val bits per
    byte on a second scale.

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
    # Bits per byte are the loss times the val split's constant (1 / ln 2) x tokens per byte: a
    # second scale on the right reads them off the val curve.
    bpb = [(r["val_bpb"], r["val_loss"]) for r in self.records if r.get("val_bpb") is not None]
    if bpb and bpb[-1][1] > 0:
      scale = bpb[-1][0] / bpb[-1][1]
      right = ax.secondary_yaxis("right", functions=(lambda x: x * scale, lambda x: x / scale))
      right.set_ylabel("val bits per byte")
    ax.set_title(os.path.basename(os.path.dirname(self.path)))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    if self.in_bucket:
      image = io.BytesIO()
      fig.savefig(image, dpi=100, format="png")
      store.write_bytes(self.plot_path, image.getvalue())
    else:
      fig.savefig(self.plot_path, dpi=100)
    plt.close(fig)

  def close(self) -> None:
    """Writes the final plot and closes TensorBoard; on a full disk the plot is left out."""
    if self.enabled:
      if self.in_bucket:
        self.sync()
      try:
        self.plot()
      except OSError as e:
        if not disk_full(e):
          raise
      self.tensorboard.close()


def host_runs_ahead() -> bool:
  """Whether the host works a step ahead of the device: reads a step's metrics only after the next
  step is dispatched (as nanodo does), so that logging never drains the device queue, and reads the
  next batches in threads (data.batches.Prefetcher). On accelerators. On a CPU the step and the host
  share the cores; there neither was measurably faster (docs/performance.md), and the host works
  in step."""
  return jax.devices()[0].platform != "cpu"


class Recorder:
  """A run's step records: timing, the log line, the progress bar, metrics.jsonl and TensorBoard.

  `step_done` is called right after a step is dispatched. On accelerators a log step's metrics are
  kept until the next step is dispatched (`host_runs_ahead`); a step that evaluates or saves is
  read at once, since the host waits for its state anyway.
  """

  def __init__(self, config, writer: MetricsWriter, progress: tqdm, start_step: int, first: dict,
               last_checkpoint):
    self.last_metrics = None  # of the last step dispatched
    self.config, self.writer, self.progress = config, writer, progress
    self.last_checkpoint = last_checkpoint  # () -> the latest saved step, for a divergence
    self.start_step, self.first = start_step, first  # first: extra fields of the first record
    self.tokens_per_step = config.batch_size * config.grad_accum_steps * config.block_size
    self.flops_per_step = flops_per_token(ModelConfig.from_config(config)) * self.tokens_per_step
    self.peak = peak_flops()
    self.late = host_runs_ahead()
    self.pending = None  # (step, metrics) of a log step not yet read
    self.last = dict(step=start_step)  # the last record written
    self.skipped_before = 0  # skipped updates counted up to the last record
    self.restart_timer(start_step)

  def restart_timer(self, step: int) -> None:
    self.timer_start, self.timer_step = time.perf_counter(), step

  def is_log_step(self, step: int) -> bool:
    return step % self.config.log_interval == 0 or step == self.start_step + 1

  def step_done(self, step: int, metrics, read_now: bool) -> dict[str, Any] | None:
    """Writes the pending record; returns this step's record if it is read now (the caller adds
    to it and writes it), or keeps it pending."""
    self.progress.update(1)
    self.last_metrics = metrics
    self.flush()
    if read_now or step == self.start_step + 1 or (self.is_log_step(step) and not self.late):
      return self.read(step, metrics)
    if self.is_log_step(step):
      self.pending = (step, metrics)
    return None

  def flush(self) -> None:
    if self.pending:
      pending, self.pending = self.pending, None
      self.write(self.read(*pending))

  def read(self, step: int, metrics) -> dict[str, Any]:
    """The step's record; waits for the step. The timer covers whole steps since the last record."""
    train_loss = float(metrics["loss"])
    skipped = self.skipped_updates(step, metrics)
    if not math.isfinite(train_loss) and not (skipped and metrics["skipped"]):
      raise DivergenceError(
          f"training loss became {train_loss} at step {step}; stopping without saving. The last "
          f"good checkpoint (step {self.last_checkpoint()}) is intact. Fix: a lower "
          f"--config.learning_rate, clipping on (--config.grad_clip=1.0), or "
          f"--config.dtype=float32.")
    elapsed = time.perf_counter() - self.timer_start
    step_time = elapsed / (step - self.timer_step)
    record = dict(step=step,
                  train_loss=train_loss,
                  lr=float(metrics["lr"]),
                  grad_norm=float(metrics["grad_norm"]),
                  step_time_ms=1000 * step_time,
                  tokens_per_second=self.tokens_per_step / step_time,
                  mfu=mfu(self.flops_per_step / step_time, jax.device_count(), self.peak))
    if "z_loss" in metrics:
      record["z_loss"] = float(metrics["z_loss"])
    if skipped:
      record.update(skipped_updates=skipped, skipped=bool(metrics["skipped"]))
    if step == self.start_step + 1:
      record.update(self.first, first_step_s=elapsed, programs_from_cache=compile_cache.hits())
    return record

  def skipped_updates(self, step: int, metrics) -> int:
    """How many updates this run skipped for non-finite gradients so far (skip_nonfinite_updates);
    a DivergenceError once that many in a row were skipped."""
    if "skipped_total" not in metrics:
      return 0
    in_a_row, limit = int(metrics["skipped_in_a_row"]), self.config.skip_nonfinite_updates
    if in_a_row >= limit:
      raise DivergenceError(
          f"{in_a_row} updates in a row up to step {step} had non-finite gradients and were "
          f"skipped (skip_nonfinite_updates={limit}); stopping without saving. The last good "
          f"checkpoint (step {self.last_checkpoint()}) is intact. Fix: a lower "
          f"--config.learning_rate, --config.z_loss=1e-4, or --config.dtype=float32.")
    return int(metrics["skipped_total"])

  def skip_note(self, record: dict[str, Any]) -> str:
    """What the log says of updates skipped since the last record (non-finite gradients)."""
    new = record.get("skipped_updates", 0) - self.last.get("skipped_updates", self.skipped_before)
    self.skipped_before = record.get("skipped_updates", self.skipped_before)
    if new <= 0:
      return ""
    return (f" | skipped {new} update(s) with non-finite gradients since the last record "
            f"({record['skipped_updates']} in all" +
            (", this step's too)" if record["skipped"] else ")"))

  def write(self, record: dict[str, Any]) -> None:
    line = (f"step {record['step']}: loss {record['train_loss']:.4f}, lr {record['lr']:.2e}, "
            f"{record['step_time_ms']:.1f} ms/step, {record['tokens_per_second']:,.0f} tok/s" +
            ("" if record["mfu"] is None else f", MFU {100 * record['mfu']:.1f}%") +
            (f" (compile: {record['programs_from_cache']} programs from the cache)"
             if record.get("programs_from_cache") else "") +
            (f" | eval: train {record['eval_train_loss']:.4f}, val {record['val_loss']:.4f}" if
             "eval_train_loss" in record else f" | eval: val {record['val_loss']:.4f} (whole split)"
             if "val_loss" in record else "") +
            (f" ({record['val_bpb']:.4f} bpb)" if record.get("val_bpb") is not None else "") +
            self.skip_note(record))
    if self.writer.enabled:  # process 0
      self.progress.write(line)
    self.progress.set_postfix(loss=f"{record['train_loss']:.3f}",
                              tok_s=f"{record['tokens_per_second']:,.0f}")
    self.writer.write(record)
    self.last = record
    self.restart_timer(record["step"])
