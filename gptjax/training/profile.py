"""--config.profile_steps=A:B: a jax.profiler trace of steps A to B under <run dir>/profile/.

The trace (XLA's xplane.pb, a trace.json.gz and a Perfetto trace) opens in TensorBoard's profile
plugin (pip install tensorboard-plugin-profile; `tensorboard --logdir <run dir>/profile`) or at
ui.perfetto.dev. jax.profiler writes through its own file system, which reaches gs:// only with
Google's credentials and endpoint: a run directory in a bucket gets the trace written locally
first and then copied up. Tracing changes no number a step computes.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import jax

from gptjax import store
from gptjax.errors import ConfigError


def profile_range(text: str) -> tuple[int, int] | None:
  """(A, B) of a profile_steps "A:B" (1 <= A <= B); None for ""; a ConfigError when malformed."""
  if not text:
    return None
  try:
    first, last = (int(part) for part in text.split(":"))
  except ValueError:
    first, last = 0, -1
  if not 1 <= first <= last:
    raise ConfigError(f"config field 'profile_steps': {text!r} is not a range of steps A:B with "
                      f"1 <= A <= B. Fix: e.g. --config.profile_steps=10:12, or "
                      f"--config.profile_steps= for no trace.")
  return first, last


class Profiler:
  """Starts the trace before step A is dispatched and stops it once step B has finished."""

  def __init__(self, profile_steps: str, run_dir: str, say):
    self.steps = profile_range(profile_steps)
    self.target = store.join(run_dir, "profile")
    self.local = (tempfile.mkdtemp(
        prefix="gptjax-profile-") if store.is_url(run_dir) else self.target)
    self.say, self.running = say, False

  def before(self, step: int) -> None:
    """Called before dispatching `step` (1-based: the step that makes state.step == step)."""
    if self.steps and step == self.steps[0]:
      jax.profiler.start_trace(self.local, create_perfetto_trace=True)
      self.running = True

  def annotation(self, step: int):
    return jax.profiler.StepTraceAnnotation("train", step_num=step)

  def after(self, step: int, state) -> None:
    if self.running and step >= self.steps[1]:
      jax.block_until_ready(state)
      self.stop()
      self.say(f"profile of steps {self.steps[0]}-{self.steps[1]} written to {self.target} "
               f"(view: tensorboard --logdir {self.target}, or the perfetto_trace.json.gz at "
               f"https://ui.perfetto.dev)")

  def stop(self) -> None:
    if not self.running:
      return
    self.running = False
    jax.profiler.stop_trace()
    if self.local != self.target:  # copy the trace up into the bucket
      for root, _, names in os.walk(self.local):
        for name in names:
          path = os.path.join(root, name)
          store.copy_file(path, store.join(self.target, os.path.relpath(path, self.local)))
      shutil.rmtree(self.local, ignore_errors=True)
