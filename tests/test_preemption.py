"""Preemption of a multi-host run and checkpoints by time: SIGTERM to one of two processes makes
both save the same step (JAX's preemption sync point) and stop; the same command resumes there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, read_metrics
from test_sharding import free_port

TRAIN = ("-m", "gptjax.train", "--config=tiny_char", "--config.n_layer=1", "--config.eval_iters=1",
         "--config.log_interval=1", "--config.eval_interval=1000", "--config.dropout=0.1",
         "--config.cpu_devices=2", "--config.compilation_cache_dir=")


def start_two(out_dir, *overrides):
  port = free_port()
  env = {
      **os.environ, "JAX_PLATFORMS": "cpu",
      "PYTHONUNBUFFERED": "1",
      "XLA_FLAGS": "--xla_backend_optimization_level=0"
  }
  return [
      subprocess.Popen([
          sys.executable, *TRAIN, f"--config.out_dir={out_dir}", *overrides,
          f"--config.distributed.coordinator_address=127.0.0.1:{port}",
          "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"
      ],
                       cwd=REPO_ROOT,
                       env=env,
                       stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE,
                       text=True) for i in range(2)
  ]


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_saves_the_same_step_on_both_and_resumes(tmp_path):
  workers = start_two(tmp_path, "--config.max_iters=100000")
  for line in workers[0].stdout:  # process 0 logs each step
    if line.startswith("step 3:"):
      workers[1].send_signal(signal.SIGTERM)  # only process 1 is told
      break
  outputs = [worker.communicate(timeout=300) for worker in workers]
  stopped = [line for line in outputs[0][0].splitlines() if "SIGTERM (preemption) at step" in line]
  assert stopped and "checkpoint saved" in stopped[0], outputs[0][0][-2000:] + outputs[0][1][-3000:]
  step = int(stopped[0].split("at step ")[1].split(":")[0])
  assert [w.returncode for w in workers] == [130, 130], [o[1][-2000:] for o in outputs]
  checkpoints = tmp_path / "tiny_char" / "checkpoints"
  assert str(step) in os.listdir(checkpoints)  # one checkpoint, written by both processes
  assert max(int(n) for n in os.listdir(checkpoints) if n.isdigit()) == step

  resumed = start_two(tmp_path, f"--config.max_iters={step + 2}")
  outputs = [worker.communicate(timeout=300) for worker in resumed]
  assert [w.returncode for w in resumed] == [0, 0], [o[1][-3000:] for o in outputs]
  assert f"resuming from step {step}" in outputs[0][0]
  records = read_metrics(tmp_path / "tiny_char")
  assert [r["step"] for r in records] == list(range(1, step + 3))


def test_checkpoint_minutes_saves_by_time(tiny):
  """A run whose interval has always passed saves every step; one whose interval never passes
  saves only at its evaluations (the max_iters end here)."""
  from gptjax.checkpoint import Checkpointer
  from gptjax.training.loop import train
  for name, minutes, expected in (("often", 1e-6, [1, 2, 3, 4]), ("rarely", 1e3, [4])):
    config = tiny(model_name=name,
                  max_iters=4,
                  eval_interval=100,
                  keep_checkpoints=10,
                  checkpoint_minutes=minutes)
    train(config)
    checkpointer = Checkpointer(os.path.join(config.out_dir, name), read_only=True)
    assert sorted(checkpointer.manager.all_steps()) == expected, name
    checkpointer.close()


@pytest.mark.slow
def test_checkpoint_minutes_on_two_processes_saves_the_same_steps(tmp_path):
  """Process 0's clock decides for both (a broadcast): every step of a run whose interval has
  always passed is one checkpoint that both processes wrote."""
  workers = start_two(tmp_path, "--config.max_iters=3", "--config.checkpoint_minutes=1e-6",
                      "--config.keep_checkpoints=10")
  outputs = [worker.communicate(timeout=300) for worker in workers]
  assert [w.returncode for w in workers] == [0, 0], [o[1][-3000:] for o in outputs]
  checkpoints = tmp_path / "tiny_char" / "checkpoints"
  assert sorted(int(n) for n in os.listdir(checkpoints) if n.isdigit()) == [1, 2, 3]
