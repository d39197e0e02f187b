"""The training loop end to end: learning, resuming, run-directory checks, divergence."""

from __future__ import annotations

import json
import math
import os
import re
import struct

import numpy as np
import pytest

from gptjax.checkpoint import Checkpointer
from gptjax.data import dataset
from gptjax.errors import CheckpointError, DivergenceError
from gptjax.training.loop import train

from conftest import REPO_ROOT, assert_user_error, read_metrics, run_command, run_module


def run_metrics(config):
  return read_metrics(os.path.join(config.out_dir, config.model_name))


def test_tiny_run_learns_and_writes_its_run_directory(tiny, capsys):
  config = tiny(max_iters=40, eval_interval=20, learning_rate=1e-2, min_lr=1e-3)
  result = train(config)
  printed = "".join(capsys.readouterr())
  records = run_metrics(config)
  assert [r["step"] for r in records] == list(range(1, 41))
  first, last = records[0], records[-1]
  assert last["train_loss"] < first["train_loss"] - 1.5
  assert result["val_loss"] == last["val_loss"] and last["val_loss"] < 3.5
  for key in ("lr", "step_time_ms", "tokens_per_second"):
    assert all(r[key] > 0 for r in records)
  assert all(r["mfu"] is None for r in records)  # CPU: peak unknown, so none is invented
  run_dir = os.path.join(config.out_dir, config.model_name)
  for name in ("config.json", "loss.png", "tensorboard"):
    assert os.path.exists(os.path.join(run_dir, name)), name
  checkpointer = Checkpointer(run_dir, read_only=True)
  assert checkpointer.latest_step() == 40 and set(checkpointer.manager.all_steps()) == {20, 40}
  # Bits per byte: the loss in bits over the bytes of text the val tokens stand for, counted here
  # by decoding them (the document separator stands for no text).
  val = np.asarray(dataset.open_tokens(config).val)
  text_bytes = len(bytes(int(t) for t in val if t != 255).decode("utf-8").encode("utf-8"))
  evaluated = [r for r in records if "val_loss" in r]
  assert [r["step"] for r in evaluated] == [20, 40]
  for r in evaluated:
    np.testing.assert_allclose(r["val_bpb"],
                               r["val_loss"] * len(val) / math.log(2) / text_bytes,
                               rtol=1e-12)
    assert f"val {r['val_loss']:.4f} ({r['val_bpb']:.4f} bpb)" in printed, r
  assert tensorboard_scalars(os.path.join(run_dir, "tensorboard"))["val_bpb"] == [
      (r["step"], pytest.approx(r["val_bpb"])) for r in evaluated
  ]


def tensorboard_scalars(directory):
  """{tag: [(step, value)]} read from tensorboardX's event files (TFRecord framing)."""
  from tensorboardX.proto import event_pb2
  scalars = {}
  for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name), "rb") as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      length = struct.unpack("<Q", data[offset:offset + 8])[0]
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_checkpoint_interval_saves_between_log_steps(tiny):
  """Saves land every checkpoint_interval steps, also on steps that neither log nor evaluate."""
  config = tiny(max_iters=10,
                log_interval=2,
                checkpoint_interval=3,
                eval_interval=100,
                keep_checkpoints=10)
  train(config)
  checkpointer = Checkpointer(os.path.join(config.out_dir, config.model_name), read_only=True)
  assert sorted(checkpointer.manager.all_steps()) == [3, 6, 9, 10]  # 10: the final evaluation


def test_resumed_run_equals_uninterrupted_run(tiny):
  straight = tiny(model_name="straight",
                  max_iters=12,
                  lr_decay_iters=12,
                  eval_interval=6,
                  dropout=0.1)
  train(straight)
  interrupted = tiny(model_name="resumed",
                     max_iters=6,
                     lr_decay_iters=12,
                     eval_interval=6,
                     dropout=0.1)
  train(interrupted)
  interrupted.max_iters = 12
  train(interrupted)  # the same command again, with the run extended: resumes from step 6
  a, b = run_metrics(straight), run_metrics(interrupted)
  assert [r["step"] for r in b] == list(range(1, 13))
  for key in ("train_loss", "grad_norm", "lr", "val_loss"):
    np.testing.assert_allclose([r.get(key, 0) for r in b], [r.get(key, 0) for r in a],
                               rtol=1e-6,
                               err_msg=key)


def test_resume_with_muon_and_wsd_is_bitwise(tiny):
  """Muon's state (its momentum, within optax's partition) and the warmup-stable-decay schedule
  come back from the checkpoint exactly: the resumed run's records equal the straight run's."""
  settings = dict(optimizer="muon",
                  lr_schedule="wsd",
                  lr_decay_fraction=0.5,
                  max_iters=12,
                  lr_decay_iters=12,
                  eval_interval=6,
                  dropout=0.1)
  straight = tiny(model_name="straight", **settings)
  train(straight)
  interrupted = tiny(model_name="resumed", **{**settings, "max_iters": 6})
  train(interrupted)
  interrupted.max_iters = 12
  train(interrupted)
  a, b = run_metrics(straight), run_metrics(interrupted)
  assert [r["step"] for r in b] == list(range(1, 13))
  for key in ("train_loss", "grad_norm", "lr", "val_loss"):
    assert [r.get(key) for r in b] == [r.get(key) for r in a], key
  # ... and resuming it with another optimizer is refused, naming the one it was trained with.
  other = tiny(model_name="resumed", **{**settings, "max_iters": 14, "optimizer": "adamw"})
  with pytest.raises(CheckpointError, match="optimizer='muon'.*--config.optimizer=muon"):
    train(other)


def test_resuming_a_different_architecture_is_an_error(tiny):
  config = tiny(max_iters=4)
  train(config)
  changed = tiny(max_iters=8, n_layer=3, n_embd=48)
  with pytest.raises(CheckpointError, match="n_layer.*n_embd|n_embd.*n_layer") as error:
    train(changed)
  assert "model_name" in str(error.value)
  assert Checkpointer(os.path.join(config.out_dir, "tiny"), read_only=True).latest_step() == 4


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tiny):
  config = tiny(max_iters=4)
  train(config)
  run_dir = os.path.join(config.out_dir, "tiny")
  checkpointer = Checkpointer(run_dir, read_only=True)
  saved = set(checkpointer.manager.all_steps())
  exploding = tiny(max_iters=12,
                   learning_rate=1e6,
                   min_lr=1e5,
                   grad_clip=0.0,
                   warmup_iters=0,
                   eval_interval=4,
                   resume_with_changes=True)
  with pytest.raises(DivergenceError, match="last good checkpoint"):
    train(exploding)
  checkpointer = Checkpointer(run_dir, read_only=True)
  assert set(checkpointer.manager.all_steps()) == saved  # nothing diverged was written


def test_cli_trains_out_of_the_box_and_samples(tmp_path):
  result = run_module("-m", "gptjax.train", "--config=tiny_char", "--config.max_iters=3",
                      "--config.eval_iters=1", "--config.n_layer=1", f"--config.out_dir={tmp_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "step 3" in result.stdout and "val" in result.stdout
  sample = run_module("-m", "gptjax.sample", f"--run_dir={tmp_path}/tiny_char", "--prompt=def ",
                      "--max_new_tokens=20", "--num_samples=2")
  assert sample.returncode == 0, sample.stderr[-3000:]
  assert sample.stdout.count("def ") >= 2 and "---------------" in sample.stdout


def test_second_run_loads_its_programs_from_the_compilation_cache(tmp_path):
  """Fresh processes, one cache directory: the first compiles and fills it, the second loads the
  train step from it (JAX's cache-hit events) and trains to the same losses. A cut cache entry
  costs the third run one compile, with a note, and is stored whole again. Sampling from the run
  caches its decode step there too."""
  cache = tmp_path / "cache"
  env = {"JAX_COMPILATION_CACHE_DIR": "", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}

  def train_run(name):
    result = run_module("-m",
                        "gptjax.train",
                        "--config=tiny_char",
                        "--config.n_layer=1",
                        "--config.max_iters=3",
                        "--config.eval_iters=1",
                        "--config.log_interval=1",
                        f"--config.out_dir={tmp_path}",
                        f"--config.model_name={name}",
                        f"--config.compilation_cache_dir={cache}",
                        env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return read_metrics(tmp_path / name), result.stderr

  (first, _), (second, _) = train_run("first"), train_run("second")
  # The first run can hit its own entries (a program it compiles twice); the second also loads
  # init and the train step.
  assert second[0]["programs_from_cache"] >= first[0]["programs_from_cache"] + 2, (first, second)
  for key in ("train_loss", "val_loss"):
    assert [r.get(key) for r in second] == [r.get(key) for r in first], key

  [entry] = [
      cache / name
      for name in os.listdir(cache)
      if name.startswith("jit_train_step-") and name.endswith("-cache")
  ]
  whole = entry.stat().st_size
  os.truncate(entry, whole // 2)  # as a kill or a full disk during JAX's write leaves it
  third, stderr = train_run("third")
  notes = [line for line in stderr.splitlines() if "compilation cache" in line]
  assert len(notes) == 1 and notes[0].startswith("note: removed an unreadable") \
      and entry.name in notes[0], stderr[-3000:]
  assert "Error reading persistent compilation cache entry" not in stderr
  # Compiled again and stored in its place (the bytes differ a little: they hold the compile time).
  assert abs(entry.stat().st_size - whole) < 0.02 * whole, (entry.stat().st_size, whole)
  assert [r["train_loss"] for r in third] == [r["train_loss"] for r in first]

  # Sampling from the run uses the cache its config names: both decode programs land there.
  sample = run_module("-m",
                      "gptjax.sample",
                      f"--run_dir={tmp_path / 'second'}",
                      "--max_new_tokens=5",
                      env=env)
  assert sample.returncode == 0, sample.stderr[-3000:]
  for program in ("jit__prefill-", "jit__advance-"):
    assert any(name.startswith(program) for name in os.listdir(cache)), program


def test_cli_accepts_a_nanogpt_style_json_preset(tmp_path):
  preset = tmp_path / "my_custom.json"
  preset.write_text(
      json.dumps({
          "name": "GPT-Custom",
          "n_layer": 1,
          "n_head": 2,
          "n_embd": 32,
          "block_size": 16,
          "vocab_size": 256,
          "batch_size": 4,
          "dropout": 0.0,
          "bias": False,
          "device": "cuda"
      }))
  result = run_module("-m", "gptjax.train", f"--config={preset}", "--config.max_iters=2",
                      "--config.eval_iters=1", f"--config.out_dir={tmp_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert os.path.isdir(tmp_path / "my_custom" / "checkpoints")


@pytest.mark.parametrize("args, fragments", [
    (["--config=configs/nope.py"], ["nope.py", "does not exist"]),
    (["--config=tiny_char", "--config.n_embd=100", "--config.n_head=3"], ["n_head", "100", "3"]),
    (["--config=tiny_char", "--config.n_layr=3"], ["n_layr", "n_layer"]),
    (["--config=tiny_char", "--config.mesh.fsdpp=3"], ["fsdpp", "fsdp"]),
    (["--config=tiny_char", "--config.input_file=/no/such.txt"], ["/no/such.txt"]),
    (["--config=tiny", "--config.tokenizer_path=/no/gpt2.tiktoken"], ["/no/gpt2.tiktoken"]),
    (["--config=tiny", "--config.vocab_size=1000", "--config.tokenizer=gpt2"
     ], ["vocab_size", "1000", "50257"]),
    (["--config=tiny_char", "--config.out_dir=/etc/passwd/x"
     ], ["out_dir", "/etc/passwd", "not a directory"]),
    (["--config=tiny_char", "--config.max_iters=abc"], ["max_iters", "abc", "integer"]),
    (["--config=tiny_char", "--config.remat=maybe"], ["remat", "maybe", "dots_no_batch+attn_out"]),
    (["--config=tiny_char", "--config.loss_chunk_tokens=-1"], ["loss_chunk_tokens", "-1"]),
    (["--config=tiny_char", "--config.seed=-1"], ["seed", "-1"]),
    (["--config=tests/data/raising_preset.py"
     ], ["raising_preset.py", "get_config() raised", "RuntimeError"]),
    (["--config=tests/data/not_a_configdict_preset.py"
     ], ["not_a_configdict_preset.py", "not a ConfigDict"]),
])
def test_cli_bad_input_is_one_clear_error(tmp_path, args, fragments):
  if not any(arg.startswith("--config.out_dir=") for arg in args):
    args = [*args, f"--config.out_dir={tmp_path}"]
  args = [arg.replace("=tests/data/", f"={REPO_ROOT}/tests/data/") for arg in args]
  result = run_command("gptjax.train", *args)
  assert_user_error(result, *fragments)
  assert not os.path.exists(tmp_path / "tiny_char" / "checkpoints")


def test_sampling_from_a_directory_without_checkpoints_is_an_error(tmp_path):
  assert_user_error(run_command("gptjax.sample", f"--run_dir={tmp_path}"), "no checkpoints")


def test_ctrl_c_saves_a_checkpoint_and_the_same_command_resumes(tmp_path):
  import signal
  import subprocess
  import sys
  from conftest import REPO_ROOT
  command = [
      "-m", "gptjax.train", "--config=tiny_char", "--config.n_layer=1", "--config.log_interval=1",
      "--config.eval_interval=100000", f"--config.out_dir={tmp_path}"
  ]
  args = [sys.executable, *command, "--config.max_iters=100000"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
  process = subprocess.Popen(args,
                             cwd=REPO_ROOT,
                             env=env,
                             stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE,
                             text=True)
  for line in process.stdout:  # wait until training is under way
    if line.startswith("step 3:"):
      break
  process.send_signal(signal.SIGINT)
  stdout, stderr = process.communicate(timeout=120)
  assert process.returncode == 130, stderr[-3000:]
  assert "checkpoint saved" in stdout and "Traceback" not in stderr
  saved = Checkpointer(str(tmp_path / "tiny_char"), read_only=True).latest_step()
  assert saved >= 3
  resumed = run_module(*command, f"--config.max_iters={saved + 2}")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resuming from step {saved}" in resumed.stdout
  steps = [r["step"] for r in read_metrics(tmp_path / "tiny_char")]
  assert steps[-2:] == [saved + 1, saved + 2] and len(steps) == len(set(steps))


def test_running_the_host_ahead_logs_the_same_records(tiny, monkeypatch):
  """On accelerators a log step's metrics are read after the next step is dispatched, and the next
  batches are read in a thread: the records (steps, losses, evaluations) equal those of a host
  working in step, as on a CPU."""
  from gptjax.training import metrics
  runs = {}
  for late in (False, True):
    monkeypatch.setattr(metrics, "host_runs_ahead", lambda late=late: late)
    config = tiny(model_name=f"late_{late}",
                  max_iters=11,
                  log_interval=2,
                  eval_interval=5,
                  checkpoint_interval=3,
                  keep_checkpoints=10)
    train(config)
    runs[late] = run_metrics(config)
    checkpointer = Checkpointer(os.path.join(config.out_dir, config.model_name), read_only=True)
    assert sorted(checkpointer.manager.all_steps()) == [3, 5, 6, 9, 10, 11]
  assert [r["step"] for r in runs[True]] == [1, 2, 3, 4, 5, 6, 8, 9, 10, 11]
  for key in ("step", "train_loss", "grad_norm", "lr", "val_loss", "eval_train_loss"):
    assert [r.get(key) for r in runs[True]] == [r.get(key) for r in runs[False]], key


def test_remat_auto_trains_with_the_first_policy_whose_step_fits(tiny, monkeypatch, capsys):
  """remat "auto" compiles none, dots_no_batch and full in turn and trains with the first whose step
  leaves 10% of a device free: on this CPU's memory none, the very run --config.remat=none
  trains (same losses, bit for bit), config.json keeping "auto"; on a device too small for any,
  full, which then stops as a step too big does, naming each policy's compiled bytes."""
  from gptjax.devices import DEVICE_MEMORY_ENV
  from gptjax.errors import DeviceMemoryError
  auto, plain = tiny(model_name="auto", remat="auto"), tiny(model_name="none", remat="none")
  train(auto)
  assert "remat auto: none (the step per device: none " in capsys.readouterr().out
  train(plain)
  for key in ("train_loss", "grad_norm", "val_loss"):
    assert [r.get(key) for r in run_metrics(auto)] == [r.get(key) for r in run_metrics(plain)]
  with open(os.path.join(auto.out_dir, auto.model_name, "config.json")) as f:
    assert json.load(f)["remat"] == "auto"
  monkeypatch.setenv(DEVICE_MEMORY_ENV, "0.0001")  # 105 KiB: no policy's step fits
  with pytest.raises(DeviceMemoryError, match="needs .* per device"):
    train(tiny(model_name="small", remat="auto"))
  said = capsys.readouterr().out
  assert re.search(
      r"remat auto: full \(the step per device: none [\d.]+ GiB, dots_no_batch "
      r"[\d.]+ GiB, full [\d.]+ GiB; the device has 0.00 GiB", said), said
