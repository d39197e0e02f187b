"""Never losing a run: the best checkpoint across resumes, damaged checkpoints, a torn
metrics.jsonl, unfinished saves left by a kill."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from gptjax.checkpoint import Checkpointer
from gptjax.errors import DataError
from gptjax.training.loop import train
from gptjax.training.metrics import read_records

from conftest import REPO_ROOT, assert_user_error, damage, read_metrics, run_module


def run_dir_of(config) -> str:
  return os.path.join(config.out_dir, config.model_name)


def sample(run_dir: str, *args):
  return run_module("-m", "gptjax.sample", f"--run_dir={run_dir}", "--max_new_tokens=3", *args)


def test_best_checkpoint_survives_resumes_and_is_what_sample_loads(tiny):
  config = tiny(max_iters=4, eval_interval=2, keep_checkpoints=1)
  train(config)
  run_dir = run_dir_of(config)
  config.learning_rate = config.min_lr = 3.0  # far too high from here on: the val loss rises
  config.resume_with_changes = True
  for resumed_to in (8, 10):  # each resume saves twice, and keeps only the last by recency
    config.max_iters = resumed_to
    train(config)
    evals = [(r["val_loss"], r["step"]) for r in read_metrics(run_dir) if "val_loss" in r]
    best_loss, best = min(evals)
    assert best <= 4, evals  # else the test would not tell best from latest
    checkpointer = Checkpointer(run_dir, read_only=True)
    assert checkpointer.best_step() == best
    # Besides: step 4, where the first run ended and its settings changed, and 8, where the
    # second run ended, are kept for good.
    assert set(checkpointer.manager.all_steps()) == {best, 4, 8, resumed_to}
    result = sample(run_dir, "--checkpoint=best")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"loaded checkpoint step {best} (best by val loss {best_loss:.4f})" in result.stderr
  latest = sample(run_dir)
  assert "loaded checkpoint step 10 (latest)" in latest.stderr, latest.stderr[-3000:]


def test_a_damaged_latest_checkpoint_costs_one_checkpoint(tiny, capfd):
  config = tiny(max_iters=4, eval_interval=2)
  train(config)
  run_dir = run_dir_of(config)
  damage(os.path.join(run_dir, "checkpoints", "4"))
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
  command = [
      "-m", "gptjax.train", "--config=tiny_char", "--config.n_layer=1", "--config.eval_iters=1",
      "--config.eval_interval=1", f"--config.out_dir={tmp_path}"
  ]
  result = run_module(*command, "--config.max_iters=2")
  assert result.returncode == 0, result.stderr[-3000:]
  run_dir = str(tmp_path / "tiny_char")
  for step in (1, 2):
    damage(os.path.join(run_dir, "checkpoints", str(step)))
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


TINY_COMMAND = ("-m", "gptjax.train", "--config=tiny_char", "--config.n_layer=1",
                "--config.eval_iters=1", "--config.log_interval=1")


def tree_state(directory) -> dict[str, float]:
  """Every file under `directory` with its modification time."""
  return {
      os.path.join(root, name): os.stat(os.path.join(root, name)).st_mtime
      for root, _, files in os.walk(directory) for name in files
  }


def test_a_second_writer_is_refused_and_a_dead_holder_is_taken_over(tmp_path):
  from gptjax.training.lock import RunLock
  run_dir = tmp_path / "tiny_char"
  command = (*TINY_COMMAND, "--config.max_iters=2", f"--config.out_dir={tmp_path}")
  run_dir.mkdir()  # (a lock on a directory it made removes it when released, still empty)
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
  assert not (run_dir / "lock").exists()  # released at the end, and removed
  assert [r["step"] for r in read_metrics(run_dir)] == [1, 2]


def test_a_failing_command_changes_nothing_in_the_run_directory(tmp_path):
  command = (*TINY_COMMAND, f"--config.out_dir={tmp_path}")
  assert run_module(*command, "--config.max_iters=2").returncode == 0
  before = tree_state(tmp_path / "tiny_char")
  assert_user_error(run_module(*command, "--config.max_iters=4", "--config.seed=-1"), "seed", "-1")
  assert tree_state(tmp_path / "tiny_char") == before


def test_a_signal_after_the_last_step_keeps_the_final_checkpoint_and_exits_0(tmp_path):
  import signal
  import subprocess
  import sys
  from conftest import REPO_ROOT
  args = [
      sys.executable, *TINY_COMMAND, "--config.max_iters=6", "--config.eval_interval=100",
      f"--config.out_dir={tmp_path}"
  ]
  process = subprocess.Popen(args,
                             cwd=REPO_ROOT,
                             stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE,
                             text=True,
                             env={
                                 **os.environ, "JAX_PLATFORMS": "cpu",
                                 "PYTHONUNBUFFERED": "1"
                             })
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
  [train_bin] = [
      os.path.join(root, "train-00000.bin")
      for root, _, files in os.walk(tmp_path / "token_cache")
      if "train-00000.bin" in files
  ]
  size = os.path.getsize(train_bin)
  os.truncate(train_bin, size // 2)  # half of it, as a full disk or an interrupted copy leaves it
  result = run_module(*command, "--config.max_iters=2")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "token cache" in result.stderr and "damaged" in result.stderr
  assert os.path.getsize(train_bin) == size


def test_resuming_with_other_settings_is_refused_unless_on_purpose(tmp_path, cli):
  """Settings that shape training differ from the checkpoint's: one error naming them and both
  ways on, nothing written; with --config.resume_with_changes=True it resumes with a note.
  Operational fields (max_iters, intervals, ...) change freely."""
  command = (*TINY_COMMAND[2:], f"--config.out_dir={tmp_path}")
  assert cli("train", *command, "--config.max_iters=2")[0] == 0
  before = tree_state(tmp_path)
  changed = (*command, "--config.max_iters=3", "--config.learning_rate=0.01", "--config.seed=7",
             "--config.log_interval=2", "--config.eval_iters=2")
  code, _, err = cli("train", *changed)
  assert code == 2 and len(err.strip().splitlines()) == 1, err
  for fragment in ("holds checkpoint step 2, trained with other settings",
                   "learning_rate: 0.001 -> 0.01", "seed: 1337 -> 7",
                   "--config.model_name=tiny_char_2", "--config.resume_with_changes=True"):
    assert fragment in err, (fragment, err)
  assert "log_interval" not in err and "eval_iters" not in err
  assert tree_state(tmp_path) == before  # refused before anything was written
  code, _, err = cli("train", *changed, "--config.resume_with_changes=True")
  assert code == 0, err[-3000:]
  note = [line for line in err.splitlines() if "new settings, on purpose" in line]
  assert len(note) == 1 and "learning_rate" in note[0] and "seed: 1337 -> 7" in note[0], note
  assert "max_iters" not in note[0]


def test_the_fields_a_resume_may_change_are_fields_and_documented():
  """Each name of config.OPERATIONAL_FIELDS is a field of the base config (a misspelt one would
  leave the real field refusing every resume that changes it), and docs/training.md lists it."""
  from gptjax.config import OPERATIONAL_FIELDS, get_base_config
  base = get_base_config()
  assert set(OPERATIONAL_FIELDS) <= set(base.keys()), set(OPERATIONAL_FIELDS) - set(base.keys())
  with open(os.path.join(REPO_ROOT, "docs", "training.md"), encoding="utf-8") as f:
    section = f.read().split("**A changed command**", 1)[1].split("\n- **", 1)[0]
  for field in OPERATIONAL_FIELDS:  # `max_iters`, `mesh.*`, --config.resume_with_changes=True
    assert re.search(rf"[`.]{field}(\.\*)?[`=]", section) or field.startswith("tokenizer"), field


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
  process = subprocess.Popen([sys.executable, *killed],
                             cwd=REPO_ROOT,
                             stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL,
                             text=True,
                             env={
                                 **os.environ, "JAX_PLATFORMS": "cpu",
                                 "PYTHONUNBUFFERED": "1"
                             })
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


# Each case on a 64 MiB tmpfs of its own, filled by another file to leave what the case needs.
FULL_DISK_SCRIPT = r"""
set -u
mount -t tmpfs -o size=64m tmpfs "$MNT"
free_kb() { df -k --output=avail "$MNT" | tail -1 | tr -d ' '; }
leave_free() {  # KiB
  rm -f "$MNT/filler"
  dd if=/dev/zero of="$MNT/filler" bs=1K count=$(( $(free_kb) - $1 )) status=none
}
run() {  # name, max_iters, then what python runs: -m gptjax.train, or -c "$UNCHECKED_SAVE"
  name=$1; iters=$2; shift 2
  "$PYTHON" "$@" $TRAIN --config.max_iters=$iters --config.out_dir="$MNT/out" \
    2> "$LOGS/$name.err" > /dev/null
  echo "$name $?"
}
run first 4 -m gptjax.train
half_a_step=$(( $(du -sk "$MNT/out/tiny_char/checkpoints/4" | cut -f1) / 2 ))
leave_free $half_a_step
run save 8 -m gptjax.train
leave_free $half_a_step
run during 8 -c "$UNCHECKED_SAVE"
leave_free 0
run start 8 -m gptjax.train
"$PYTHON" -c "$METRICS_APPEND" "$MNT/out/tiny_char/metrics.jsonl" 2> "$LOGS/append.err"
echo "append $?"
"$PYTHON" -m gptjax.prepare --input="$CORPUS" --tokenizer=bytes --out_dir="$MNT/data" \
  2> "$LOGS/prepare.err" > /dev/null
echo "prepare $?"
ls -A "$MNT/data" > "$LOGS/prepared.txt"
rm "$MNT/filler"
run freed 8 -m gptjax.train
cp "$MNT/out/tiny_char/metrics.jsonl" "$LOGS/"
ls "$MNT/out/tiny_char/checkpoints" > "$LOGS/checkpoints.txt"
"""

# The disk fills between the trainer's space check and Orbax's writes (another writer took it).
UNCHECKED_SAVE = """import sys
from gptjax import checkpoint, train
checkpoint.Checkpointer.check_space = lambda *args: None
sys.argv[0] = "gptjax.train"
train.cli_main()
"""

# Appends records to a run's metrics.jsonl on a full disk as the trainer does, until one fails
# (steps past the run's, so that its resume drops them, with the torn line a failed append leaves).
METRICS_APPEND = """import sys
from gptjax import errors
from gptjax.training import metrics
writer = metrics.MetricsWriter.__new__(metrics.MetricsWriter)  # appends only, no TensorBoard
writer.enabled, writer.path, writer.records = True, sys.argv[1], []
try:
  for step in range(1000, 10**6):
    writer.write(dict(step=step, padding="x" * 500))
except errors.DiskFullError as e:
  print(f"error: {e}", file=sys.stderr)
  sys.exit(2)
"""


def mount_namespace() -> list[str] | None:
  """The unshare command that lets this machine mount a small tmpfs of its own (None: none can)."""
  probe = "d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs $d && umount $d; rmdir $d"
  for command in (["unshare", "--mount"], ["unshare", "--user", "--map-root-user", "--mount"]):
    try:
      if subprocess.run([*command, "sh", "-c", probe], capture_output=True).returncode == 0:
        return command
    except OSError:
      return None
  return None


@pytest.mark.root
def test_a_full_disk_is_one_error_and_the_same_command_resumes(tmp_path):
  """The disk full before a save (the trainer's space check), during one (Orbax's writes fail),
  at the start (the run lock), during a metrics append and while gptjax.prepare writes shards:
  each is one `error:` line naming the place, exit 2, no traceback, nothing committed lost; with space freed, the same command resumes
  and the run ends as if nothing had happened."""
  unshare = mount_namespace()
  if unshare is None:
    pytest.skip("a full disk is made as a small tmpfs, which needs `unshare --mount` (root or "
                "user namespaces); this machine allows neither")
  logs, mount = tmp_path / "logs", tmp_path / "disk"
  logs.mkdir(), mount.mkdir()
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("A corpus to prepare onto a full disk.\n" * 20000)
  env = {
      **os.environ, "JAX_PLATFORMS":
          "cpu",
      "PYTHON":
          sys.executable,
      "MNT":
          str(mount),
      "LOGS":
          str(logs),
      "UNCHECKED_SAVE":
          UNCHECKED_SAVE,
      "METRICS_APPEND":
          METRICS_APPEND,
      "CORPUS":
          str(corpus),
      "TRAIN":
          " ".join(("--config=tiny_char", "--config.n_layer=1", "--config.eval_iters=1",
                    "--config.log_interval=1", "--config.eval_interval=2"))
  }
  result = subprocess.run([*unshare, "bash", "-c", FULL_DISK_SCRIPT],
                          cwd=REPO_ROOT,
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=600)
  codes = dict(line.split() for line in result.stdout.splitlines())
  assert codes == dict(first="0",
                       save="2",
                       during="2",
                       start="2",
                       append="2",
                       prepare="2",
                       freed="0"), (codes, result.stderr[-2000:])
  for case, fragments in (("save", ("checkpoints", "while saving checkpoint step 6, which needs",
                                    "MiB free", "resumes from checkpoint step 4")),
                          ("during", ("checkpoints", "while saving checkpoint step 6.",
                                      "resumes from checkpoint step 4")),
                          ("start", ("tiny_char/lock", "while taking the run directory's lock")),
                          ("append", ("metrics.jsonl", "while appending to metrics.jsonl")),
                          ("prepare", ("data", "while writing token shards", "starts over"))):
    stderr = (logs / f"{case}.err").read_text()
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no space left on the disk of" in errors[0], (case, stderr[-3000:])
    assert "Traceback" not in stderr and "RESOURCE_EXHAUSTED" not in stderr, (case, stderr[-3000:])
    for fragment in fragments:
      assert fragment in errors[0], (case, fragment, errors[0])
  freed = (logs / "freed.err").read_text()
  assert "Traceback" not in freed, freed[-3000:]
  assert "dropped its torn last line" in freed  # the append the full disk cut short
  assert "6.orbax-checkpoint-tmp" in freed  # the save the full disk cut short, removed
  assert (logs / "prepared.txt").read_text().split() in ([], [".prepare.lock"])  # no partial shards
  assert (logs / "checkpoints.txt").read_text().split() == ["4", "6", "8"]
  assert [r["step"] for r in read_metrics(logs)] == list(range(1, 9))


def test_the_readme_command_rerun_with_a_changed_setting_loses_no_checkpoint(tmp_path, cli):
  """README's first command (`--config=tiny_char --config.max_iters=200`, made small: 1 layer,
  4 steps, a checkpoint every 2, one kept), then run again as in the report: with
  --config.batch_size=8 and without max_iters it is refused, both fixes named, nothing written;
  without max_iters it continues toward the preset's 5,000 steps (stopped here by SIGTERM after
  a few), and the step-4 checkpoint the first run ended with is kept for good."""
  import signal
  command = (*TINY_COMMAND, "--config.eval_interval=2", "--config.keep_checkpoints=1",
             f"--config.out_dir={tmp_path}")
  assert cli("train", *command[2:], "--config.max_iters=4")[0] == 0
  run_dir = tmp_path / "tiny_char"
  before = tree_state(tmp_path)
  code, _, err = cli("train", *command[2:], "--config.batch_size=8")
  assert code == 2 and "batch_size: 16 -> 8" in err, err
  assert "--config.model_name=tiny_char_2" in err and "--config.resume_with_changes=True" in err
  assert tree_state(tmp_path) == before
  process = subprocess.Popen([sys.executable, *command],
                             cwd=REPO_ROOT,
                             stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE,
                             text=True,
                             env={
                                 **os.environ, "JAX_PLATFORMS": "cpu",
                                 "PYTHONUNBUFFERED": "1"
                             })
  for line in process.stdout:
    if line.startswith("step 9:"):  # 6 and 8 saved since: keep_checkpoints=1 would rotate 4 out
      process.send_signal(signal.SIGTERM)
      break
  stdout, stderr = process.communicate(timeout=120)
  assert process.returncode == 130, stderr[-3000:]
  assert "ended at step 4 (max_iters=4); continuing it to max_iters=5000" in stderr
  checkpointer = Checkpointer(str(run_dir), read_only=True)
  steps = set(checkpointer.manager.all_steps())
  assert 4 in steps and checkpointer.latest_step() >= 9, steps
  assert checkpointer.read_meta(4)["config"]["max_iters"] == 4  # intact, the first run's


def test_paths_that_cannot_be_written_are_one_error(tmp_path, cli):
  """out_dir under /proc or /sys, a model_name that leaves out_dir, prepare's --out_dir under
  /proc: one error line each (exit 2), nothing written."""
  train = ("--config=tiny_char", "--config.n_layer=1", "--config.max_iters=1")
  for args, fragments in (
      (("--config.out_dir=/proc/gptjax",), ["'/proc' cannot be written", "--config.out_dir=out"]),
      (("--config.out_dir=/sys/gptjax",), ["'/sys' cannot be written", "--config.out_dir=out"]),
      ((f"--config.out_dir={tmp_path}", "--config.model_name=../../../proc/x"),
       ["'model_name'", "leaves out_dir", "--config.model_name=x"]),
  ):
    code, _, err = cli("train", *train, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
      assert fragment in err, (fragment, err)
  code, _, err = cli("prepare", f"--input={REPO_ROOT}/README.md", "--tokenizer=bytes",
                     "--out_dir=/proc/gptjax/data")
  assert code == 2 and "'/proc' cannot be written" in err and "--out_dir=data/data" in err, err
  assert os.listdir(tmp_path) == []


def test_the_first_problem_reported_is_the_cheap_local_one(tmp_path, cli, monkeypatch):
  """Offline, README's Dante command names the missing input_dante.txt, not the GPT-2 download."""
  from gptjax.data import tokenizer

  def offline(name):
    raise ConnectionError("no network")

  monkeypatch.setattr(tokenizer.tiktoken, "get_encoding", offline)
  monkeypatch.delenv(tokenizer.GPT2_TIKTOKEN_ENV, raising=False)
  monkeypatch.chdir(tmp_path)
  code, _, err = cli("train", "--config=150M", "--config.model_name=dante_150M",
                     "--config.input_file=input_dante.txt", "--config.max_iters=5000",
                     "--config.learning_rate=1e-4")
  assert code == 2 and "'input_dante.txt' does not exist" in err and "GPT-2" not in err, err
  (tmp_path / "input_dante.txt").write_text("Nel mezzo del cammin di nostra vita\n" * 100)
  code, _, err = cli("train", "--config=150M", "--config.input_file=input_dante.txt")
  assert code == 2 and "GPT-2 BPE is not available" in err, err  # now the download is the problem
  assert os.listdir(tmp_path) == ["input_dante.txt"]
