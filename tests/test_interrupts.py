"""Ctrl-C at any moment of any command: exit status 130, one line, no crash, nothing left behind.

Each command runs as a user runs it, with stderr on a terminal (a pseudo-terminal here), where
it says what it is doing while that is slow; Ctrl-C is sent to its whole process group (as a
terminal sends it) the moment its own output says it is importing, or compiling (with an empty
compilation cache) or at its work. Then: exit status 130, "interrupted." as the one line after
the command's own, no core, and the directories it was writing as they were before.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest

from conftest import REPO_ROOT, TEXT, tiny_config

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="a pseudo-terminal and SIGINT")


def interrupt_when(args, marker: str, cwd, timeout: float = 180) -> tuple[int, str, str, float]:
  """Runs `python *args` with stderr on a pseudo-terminal (100 columns) in a session of its own,
  sends SIGINT to its process group when `marker` appears in its output, and returns (exit
  status, stdout, stderr, seconds until the signal)."""
  master, slave = pty.openpty()
  fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
  env = {
      **os.environ, "JAX_PLATFORMS": "cpu",
      "PYTHONPATH": REPO_ROOT,
      "JAX_COMPILATION_CACHE_DIR": os.path.join(cwd, "empty-compilation-cache")
  }
  process = subprocess.Popen([sys.executable, *args],
                             cwd=cwd,
                             env=env,
                             stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE,
                             stderr=slave,
                             start_new_session=True)
  os.close(slave)
  output = {process.stdout.fileno(): b"", master: b""}
  reading, sent, start = set(output), None, time.monotonic()
  try:
    while reading and time.monotonic() - start < timeout:
      for fd in select.select(list(reading), [], [], 0.2)[0]:
        try:
          data = os.read(fd, 1 << 16)
        except OSError:  # the terminal's other end is closed: the command has exited
          data = b""
        output[fd] += data
        if not data:
          reading.discard(fd)
      if sent is None and marker.encode() in b"".join(output.values()):
        os.killpg(process.pid, signal.SIGINT)
        sent = time.monotonic() - start
    process.wait(timeout=60)
  finally:
    if process.poll() is None:
      os.killpg(process.pid, signal.SIGKILL)
    os.close(master)
  assert sent is not None, (marker, output)
  stdout = output[process.stdout.fileno()].decode(errors="replace")
  stderr = output[master].decode(errors="replace").replace("\r\n", "\n")
  return process.returncode, stdout, stderr, sent


def assert_interrupted(result, cwd) -> None:
  """Exit 130; the last line of stderr is "interrupted.", its only line besides the command's
  own (what it is doing, its progress bar, notes); no crash, no core, no process left."""
  code, stdout, stderr, _ = result
  assert code == 130, (code, stdout[-2000:], stderr[-3000:])
  lines = [line.strip() for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
  assert lines[-1] == "interrupted." and lines.count("interrupted.") == 1, stderr
  for line in lines[:-1]:
    assert line.startswith(("gptjax.", "tokenizing", "note:", "# ")), (line, stderr)
  for crash in ("Traceback", "Fatal Python error", "Segmentation fault", "KeyboardInterrupt"):
    assert crash not in stderr + stdout, (crash, stderr)
  assert not [name for name in os.listdir(cwd) if name.startswith("core")]


def tree(directory) -> dict[str, tuple[int, float]]:
  """Every file and directory below `directory`, with its size and modification time."""
  found = {}
  for root, dirs, names in os.walk(directory):
    for name in dirs + names:
      path = os.path.join(root, name)
      found[path] = (os.path.getsize(path) if name in names else 0, os.stat(path).st_mtime)
  return found


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny run (2 steps) and a nanoGPT-style JSON preset of its config, to resume it with."""
  from gptjax.training.loop import train
  config = tiny_config(tmp_path_factory.mktemp("trained"), max_iters=2, eval_interval=2)
  train(config)
  preset = os.path.join(config.out_dir, "tiny.json")
  with open(preset, "w") as f:
    json.dump(config.to_dict(), f)
  return config, preset


TRAIN = ("-m", "gptjax.train", "--config=tiny_char", "--config.n_layer=1", "--config.max_iters=4")


@pytest.mark.parametrize(
    "command",
    ["train", "sample", "plan", "prepare", "convert", "show_configs", "calculate_params"])
def test_ctrl_c_while_importing(tmp_path, command):
  args = {
      "train": (*TRAIN, f"--config.out_dir={tmp_path / 'out'}"),
      "sample": ("-m", "gptjax.sample", f"--run_dir={tmp_path / 'out'}"),
      "plan": ("-m", "gptjax.plan", "--config=tiny_char"),
      "prepare": ("-m", "gptjax.prepare", f"--input={tmp_path}", "--tokenizer=bytes",
                  f"--out_dir={tmp_path / 'out'}"),
      "convert": ("-m", "gptjax.convert", f"--from_hf={tmp_path}", f"--out={tmp_path / 'out'}"),
      "show_configs": ("-m", "gptjax.show_configs", "--config=tiny_char"),
      "calculate_params": ("-m", "gptjax.calculate_params", "--config=tiny_char"),
  }[command]
  result = interrupt_when(args, f"gptjax.{command}: importing", tmp_path)
  assert_interrupted(result, tmp_path)
  assert not os.path.exists(tmp_path / "out")


def test_ctrl_c_while_train_compiles_leaves_the_run_directory_as_it_was(tmp_path, trained):
  config, preset = trained
  run_dir = os.path.join(config.out_dir, config.model_name)
  before = tree(run_dir)
  result = interrupt_when(("-m", "gptjax.train", f"--config={preset}", "--config.max_iters=6"),
                          "compiling the train step", tmp_path)
  assert_interrupted(result, tmp_path)
  assert "compiling the train step" in result[1]
  assert tree(run_dir) == before and not os.path.exists(os.path.join(run_dir, "lock"))


def test_ctrl_c_while_train_compiles_a_new_run_leaves_no_run_directory(tmp_path):
  result = interrupt_when((*TRAIN, f"--config.out_dir={tmp_path / 'out'}"),
                          "compiling the train step", tmp_path)
  assert_interrupted(result, tmp_path)
  assert not os.path.exists(tmp_path / "out" / "tiny_char")  # its token cache is out/token_cache


def test_ctrl_c_while_sample_compiles(tmp_path, trained):
  config, _ = trained
  result = interrupt_when(
      ("-m", "gptjax.sample", f"--run_dir={os.path.join(config.out_dir, config.model_name)}"),
      "gptjax.sample: compiling", tmp_path)
  assert_interrupted(result, tmp_path)


def test_ctrl_c_while_plan_compiles(tmp_path):
  result = interrupt_when(("-m", "gptjax.plan", "--config=tiny_char", "--config.n_layer=1"),
                          "gptjax.plan: compiling", tmp_path)
  assert_interrupted(result, tmp_path)


def test_ctrl_c_while_prepare_tokenizes_stops_its_workers_and_leaves_nothing(tmp_path):
  corpus = tmp_path / "corpus.txt"
  corpus.write_text(TEXT * (20_000_000 // len(TEXT)))  # over 16 MB: worker processes
  result = interrupt_when(("-m", "gptjax.prepare", f"--input={corpus}", "--tokenizer=bytes",
                           f"--out_dir={tmp_path / 'data'}"), "tokenizing", tmp_path)
  assert_interrupted(result, tmp_path)
  assert not os.path.exists(tmp_path / "data")


def test_ctrl_c_while_convert_works_leaves_no_run_directory(tmp_path):
  import jax
  import jax.numpy as jnp
  from gptjax import hf_gpt2
  from gptjax.config import ModelConfig
  from gptjax.model import GPT
  model = GPT(ModelConfig(257, 16, n_layer=1, n_head=2, n_embd=32, bias=True))
  params = model.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))["params"]
  hf_gpt2.save_hf_gpt2(model, params, str(tmp_path / "hf"))
  result = interrupt_when(("-m", "gptjax.convert", f"--from_hf={tmp_path / 'hf'}",
                           f"--out={tmp_path / 'runs' / 'gpt2'}"), "gptjax.convert: reading",
                          tmp_path)
  assert_interrupted(result, tmp_path)
  assert not os.path.exists(tmp_path / "runs")
