"""Shared test set-up: offline GPT-2 BPE, tiny configs, the repo's paths and presets, run helpers."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS_DIR = os.path.join(REPO_ROOT, "configs")
SHARED_DATA = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data")
GPT2_TIKTOKEN = os.path.join(SHARED_DATA, "gpt2.tiktoken")
TINY_SHAKESPEARE = os.path.join(SHARED_DATA, "tinyshakespeare.txt")

# Tests run on the CPU, also where the planner's compile-only TPU and GPU libraries are installed
# (JAX would otherwise try, and loudly fail, to start those backends).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Tests compile many tiny models: LLVM's optimisations cost seconds per compile and buy nothing at
# these sizes. Set before JAX starts; subprocesses (the CLI tests) inherit it.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

# JAX's persistent compilation cache: one for the test run (subprocesses inherit it), not the
# user's ~/.cache/gptjax/jax. The process that makes it removes it when the run ends.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="gptjax-tests-jax-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

# GPT-2 BPE offline: the ranks file that lies beside the project (see ../shared/data/README.md).
if os.path.isfile(GPT2_TIKTOKEN):
  os.environ.setdefault("GPTJAX_GPT2_TIKTOKEN", GPT2_TIKTOKEN)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
        "Nel mezzo del cammin di nostra vita mi ritrovai per una selva oscura, ché la diritta via "
        "era smarrita. ") * 40


def tiny_config(tmp_path, **overrides):
  """A 2-layer byte-level config that compiles in seconds, writing under tmp_path."""
  from gptjax.config import get_base_config
  input_file = tmp_path / "input.txt"
  if not input_file.exists():
    input_file.write_text(TEXT, encoding="utf-8")
  config = get_base_config()
  config.update(
      dict(name="test",
           n_layer=2,
           n_head=2,
           n_embd=32,
           block_size=16,
           vocab_size=256,
           tokenizer="bytes",
           batch_size=4,
           dropout=0.0,
           max_iters=8,
           warmup_iters=2,
           learning_rate=3e-3,
           min_lr=3e-4,
           eval_interval=4,
           eval_iters=2,
           log_interval=1,
           input_file=str(input_file),
           out_dir=str(tmp_path / "out"),
           model_name="tiny"))
  for key, value in overrides.items():
    if isinstance(value, dict):
      config[key].update(value)
    else:
      config[key] = value
  return config


def perturbed_params(config, seed: int = 0):
  """A GPT's initial params (config: a ModelConfig) plus noise, so that norms' scales and biases
  are not ones and zeros."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from gptjax.model import GPT
  params = nn.meta.unbox(
      GPT(config).init(jax.random.key(seed), jnp.zeros((1, config.block_size),
                                                       jnp.int32))["params"])
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  return jax.tree.unflatten(
      tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def preset_files() -> list[str]:
  """The file names of the presets in configs/ (*.py, *.json; not _private ones), sorted."""
  return sorted(name for name in os.listdir(CONFIGS_DIR)
                if name.endswith((".py", ".json")) and not name.startswith("_"))


def read_metrics(run_dir):
  """The records of a run directory's metrics.jsonl."""
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def damage(step_dir) -> None:
  """Truncates every non-empty file of a checkpoint step's params, as a full disk or a bad copy
  would."""
  for root, _, files in os.walk(os.path.join(step_dir, "params")):
    for name in files:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 0:
        os.truncate(path, os.path.getsize(path) // 3)


def run_command(module: str, *args) -> subprocess.CompletedProcess:
  """Runs a gptjax command in this process, as `python -m <module> *args` runs it in a new one:
  its exit status, stdout and stderr. For commands that stop before training or sampling (help,
  one-line errors): no process start-up, which is most of such a test's time."""
  import contextlib
  import importlib
  import io
  import signal
  command = importlib.import_module(module)
  stdout, stderr, returncode = io.StringIO(), io.StringIO(), 0
  interrupt = signal.getsignal(signal.SIGINT)
  try:
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
      command.cli_main([module, *args])
  except SystemExit as e:
    returncode = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  finally:
    signal.signal(signal.SIGINT, interrupt)  # the command's own Ctrl-C handling stays with it
  return subprocess.CompletedProcess([module, *args], returncode, stdout.getvalue(),
                                     stderr.getvalue())


def run_module(*args, cwd=REPO_ROOT, timeout=300, env=None):
  """Runs `python -m ...` or a script as a user would; returns the CompletedProcess."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
  return subprocess.run([sys.executable, *args],
                        cwd=cwd,
                        capture_output=True,
                        text=True,
                        timeout=timeout,
                        env=env)


def assert_user_error(result, *fragments):
  """One clear error: exit 2, `error:` on stderr, no traceback, naming every fragment."""
  assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
  assert "Traceback" not in result.stderr, result.stderr
  assert "error:" in result.stderr, result.stderr
  for fragment in fragments:
    assert fragment in result.stderr, (fragment, result.stderr)


@pytest.fixture
def tiny(tmp_path):
  return lambda **overrides: tiny_config(tmp_path, **overrides)


@pytest.fixture
def cli():
  """run_command for `gptjax.<command>`, as (exit status, stdout, stderr)."""

  def run(command: str, *args: str) -> tuple[int, str, str]:
    result = run_command(f"gptjax.{command}", *args)
    return result.returncode, result.stdout, result.stderr

  return run
