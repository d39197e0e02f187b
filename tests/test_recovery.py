"""Never losing a run: the best checkpoint across resumes, damaged checkpoints, a torn
metrics.jsonl, unfinished saves left by a kill."""

from __future__ import annotations

import json
import os

import pytest

from gptjax.checkpoint import Checkpointer
from gptjax.errors import DataError
from gptjax.monitor import read_records
from gptjax.train import train

from conftest import assert_user_error, read_metrics, run_module


def run_dir_of(config) -> str:
  return os.path.join(config.out_dir, config.model_name)


def damage(run_dir: str, step: int) -> None:
  """Truncates every non-empty file of a step's params, as a full disk or a bad copy would."""
  for root, _, files in os.walk(os.path.join(run_dir, "checkpoints", str(step), "params")):
    for name in files:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 0:
        os.truncate(path, os.path.getsize(path) // 3)


def sample(run_dir: str, *args):
  return run_module("-m", "gptjax.sample", f"--run_dir={run_dir}", "--max_new_tokens=3", *args)


def test_best_checkpoint_survives_resumes_and_is_what_sample_loads(tiny):
  config = tiny(max_iters=4, eval_interval=2, keep_checkpoints=1)
  train(config)
  run_dir = run_dir_of(config)
  config.learning_rate = config.min_lr = 3.0  # far too high from here on: the val loss rises
  for resumed_to in (8, 10):  # each resume saves twice, and keeps only the last by recency
    config.max_iters = resumed_to
    train(config)
    evals = [(r["val_loss"], r["step"]) for r in read_metrics(run_dir) if "val_loss" in r]
    best_loss, best = min(evals)
    assert best <= 4, evals  # else the test would not tell best from latest
    checkpointer = Checkpointer(run_dir, read_only=True)
    assert checkpointer.best_step() == best
    assert set(checkpointer.manager.all_steps()) == {best, resumed_to}
    result = sample(run_dir, "--checkpoint=best")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"loaded checkpoint step {best} (best by val loss {best_loss:.4f})" in result.stderr
  latest = sample(run_dir)
  assert "loaded checkpoint step 10 (latest)" in latest.stderr, latest.stderr[-3000:]


def test_a_damaged_latest_checkpoint_costs_one_checkpoint(tiny, capfd):
  config = tiny(max_iters=4, eval_interval=2)
  train(config)
  run_dir = run_dir_of(config)
  damage(run_dir, 4)
  capfd.readouterr()
  result = sample(run_dir)  # read-only: skips it and leaves it in place
  assert result.returncode == 0, result.stderr[-3000:]
  notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
  assert len(notes) == 1 and "step 4" in notes[0] and "damaged" in notes[0], result.stderr
  assert "loaded checkpoint step 2" in result.stderr and "Traceback" not in result.stderr
  assert os.path.isdir(os.path.join(run_dir, "checkpoints", "4"))

  config.max_iters = 6
  train(config)  # resumes from step 2 and says so
  err = capfd.readouterr().err
  notes = [line for line in err.splitlines() if line.startswith("note:")]
  assert len(notes) == 1 and "step 4" in notes[0] and "using step 2" in notes[0], err
  assert "Traceback" not in err
  assert os.path.isdir(os.path.join(run_dir, "checkpoints", "4.damaged"))  # kept, set aside
  assert set(Checkpointer(run_dir, read_only=True).manager.all_steps()) == {2, 4, 6}
  steps = [r["step"] for r in read_metrics(run_dir)]
  assert steps == list(range(1, 7))


def test_every_checkpoint_damaged_is_one_clear_error(tmp_path):
  command = ["-m", "gptjax.train", "--config=configs/tiny_char.py", "--config.n_layer=1",
             "--config.eval_iters=1", "--config.eval_interval=1", f"--config.out_dir={tmp_path}"]
  result = run_module(*command, "--config.max_iters=2")
  assert result.returncode == 0, result.stderr[-3000:]
  run_dir = str(tmp_path / "tiny_char")
  for step in (1, 2):
    damage(run_dir, step)
  for result in (sample(run_dir), run_module(*command, "--config.max_iters=3")):
    assert_user_error(result, os.path.join(run_dir, "checkpoints"), "step 1", "step 2",
                      "model_name")
    assert len([line for line in result.stderr.splitlines() if "error:" in line]) == 1
  assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == ["1", "2"]  # none moved


def test_a_torn_metrics_line_is_dropped_and_the_run_resumes(tiny, capfd):
  config = tiny(max_iters=4, eval_interval=2, log_interval=1)
  train(config)
  run_dir = run_dir_of(config)
  with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
    f.write('{"step": 5, "train_loss": 2.3')  # a full disk mid-append
  capfd.readouterr()
  config.max_iters = 6
  train(config)
  assert "dropped its torn last line" in capfd.readouterr().err
  steps = [r["step"] for r in read_metrics(run_dir)]
  assert steps == list(range(1, 7))


def test_an_unreadable_metrics_line_before_the_last_is_an_error(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
  with pytest.raises(DataError, match="line 2"):
    read_records(str(path))
  path.write_text('{"step": 1}\n{"step": 2}\n{"st')
  assert read_records(str(path)) == [{"step": 1}, {"step": 2}]


def test_an_unfinished_save_left_by_a_kill_is_removed_with_a_note(tiny, capfd):
  config = tiny(max_iters=2, eval_interval=2)
  train(config)
  run_dir = run_dir_of(config)
  leftover = os.path.join(run_dir, "checkpoints", "4.orbax-checkpoint-tmp-1234567")
  os.makedirs(os.path.join(leftover, "params"))
  with open(os.path.join(leftover, "params", "_METADATA"), "w") as f:
    json.dump({}, f)
  capfd.readouterr()
  config.max_iters = 4
  train(config)
  err = capfd.readouterr().err
  assert "4.orbax-checkpoint-tmp-1234567" in err and "unfinished" in err, err
  assert not os.path.exists(leftover)
  assert Checkpointer(run_dir, read_only=True).latest_step() == 4


TINY_COMMAND = ("-m", "gptjax.train", "--config=configs/tiny_char.py", "--config.n_layer=1",
                "--config.eval_iters=1", "--config.log_interval=1")


def tree_state(directory) -> dict[str, float]:
  """Every file under `directory` with its modification time."""
  return {os.path.join(root, name): os.stat(os.path.join(root, name)).st_mtime
          for root, _, files in os.walk(directory) for name in files}


def test_a_second_writer_is_refused_and_a_dead_holder_is_taken_over(tmp_path):
  from gptjax.run_lock import RunLock
  run_dir = tmp_path / "tiny_char"
  command = (*TINY_COMMAND, "--config.max_iters=2", f"--config.out_dir={tmp_path}")
  held = RunLock(str(run_dir)).acquire()  # a training in progress, as another process holds it
  before = tree_state(run_dir)
  assert_user_error(run_module(*command), str(run_dir), "in use", f"pid {os.getpid()}",
                    "--config.model_name")
  assert tree_state(run_dir) == before  # the refused writer touched nothing
  held.release()
  # A holder killed with kill -9 leaves its name in the file, but no lock: taken over, with a note.
  (run_dir / "lock").write_text(json.dumps(dict(pid=2**22 + 7, host="gone", since="then")))
  result = run_module(*command)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "taking over" in result.stderr and "pid 4194311 on gone" in result.stderr
  assert (run_dir / "lock").read_text() == ""  # released at the end
  assert [r["step"] for r in read_metrics(run_dir)] == [1, 2]


def test_a_failing_command_changes_nothing_in_the_run_directory(tmp_path):
  command = (*TINY_COMMAND, f"--config.out_dir={tmp_path}")
  assert run_module(*command, "--config.max_iters=2").returncode == 0
  before = tree_state(tmp_path / "tiny_char")
  assert_user_error(run_module(*command, "--config.max_iters=4", "--config.seed=-1"),
                    "seed", "-1")
  assert tree_state(tmp_path / "tiny_char") == before


def test_a_signal_after_the_last_step_keeps_the_final_checkpoint_and_exits_0(tmp_path):
  import signal
  import subprocess
  import sys
  from conftest import REPO_ROOT
  args = [sys.executable, *TINY_COMMAND, "--config.max_iters=6", "--config.eval_interval=100",
          f"--config.out_dir={tmp_path}"]
  process = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, "JAX_PLATFORMS": "cpu",
                                             "PYTHONUNBUFFERED": "1"})
  for line in process.stdout:  # the last step's line: its save has started, not committed
    if line.startswith("step 6:"):
      process.send_signal(signal.SIGTERM)
      break
  stdout, stderr = process.communicate(timeout=120)
  assert process.returncode == 0, stderr[-3000:]
  assert "the run is complete" in stdout and "Run the same command to resume" not in stdout
  assert "Traceback" not in stderr
  assert Checkpointer(str(tmp_path / "tiny_char"), read_only=True).latest_step() == 6


def test_a_damaged_token_cache_is_rebuilt_with_a_note(tmp_path):
  command = (*TINY_COMMAND, "--config.max_iters=1", f"--config.out_dir={tmp_path}")
  assert run_module(*command).returncode == 0
  [train_bin] = [os.path.join(root, "train-00000.bin") for root, _, files
                 in os.walk(tmp_path / "token_cache") if "train-00000.bin" in files]
  size = os.path.getsize(train_bin)
  os.truncate(train_bin, size // 2)  # half of it, as a full disk or an interrupted copy leaves it
  result = run_module(*command, "--config.max_iters=2")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "token cache" in result.stderr and "damaged" in result.stderr
  assert os.path.getsize(train_bin) == size


def test_resuming_with_other_settings_says_what_changed(tmp_path):
  command = (*TINY_COMMAND, f"--config.out_dir={tmp_path}")
  assert run_module(*command, "--config.max_iters=2").returncode == 0
  result = run_module(*command, "--config.max_iters=3", "--config.learning_rate=0.01",
                      "--config.seed=7")
  assert result.returncode == 0, result.stderr[-3000:]
  note = [line for line in result.stderr.splitlines() if "differ from the run's" in line]
  assert len(note) == 1 and "learning_rate" in note[0] and "seed: 1337 -> 7" in note[0], note
  assert "max_iters" not in note[0]


@pytest.mark.parametrize("field, make, fragments", [
    ("input_file", lambda p: p.mkdir() or p, ["is a directory", "text file"]),
    ("init_from", lambda p: p.write_text("{}") and p, ["is a file", "directory"]),
])
def test_a_path_of_the_wrong_kind_is_named_for_what_it_is(tmp_path, field, make, fragments):
  path = make(tmp_path / "given")
  result = run_module(*TINY_COMMAND, "--config.max_iters=1", f"--config.out_dir={tmp_path}",
                      f"--config.{field}={path}")
  assert_user_error(result, str(path), *fragments)


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_same_losses(tmp_path):
  """kill -9 mid-run (a save may be half written), then the same command: the records equal an
  uninterrupted run's, bitwise, and no step is logged twice."""
  import signal
  import subprocess
  import sys
  from conftest import REPO_ROOT
  command = (*TINY_COMMAND, "--config.max_iters=10", "--config.checkpoint_interval=2",
             "--config.eval_interval=5", "--config.dropout=0.1", f"--config.out_dir={tmp_path}")
  assert run_module(*command, "--config.model_name=straight").returncode == 0
  killed = [*command, "--config.model_name=killed"]
  process = subprocess.Popen([sys.executable, *killed], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True,
                             env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"})
  for line in process.stdout:
    if line.startswith("step 5:"):  # its evaluation's save has just started
      process.send_signal(signal.SIGKILL)
      break
  process.wait(timeout=60)
  assert process.returncode == -signal.SIGKILL
  resumed = run_module(*killed)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resuming from step" in resumed.stdout
  straight, after = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "killed")
  assert [r["step"] for r in after] == list(range(1, 11))
  for key in ("train_loss", "grad_norm", "val_loss"):
    assert [r.get(key) for r in after] == [r.get(key) for r in straight], key
