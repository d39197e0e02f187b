"""Every `Fix:` gptjax prints works: a table of every message, each triggered and its fix checked.

A message's fix names flags and commands: each `--flag` must be a flag of the command the message
comes from (or of the `python -m gptjax.<command>` it names, written in backticks), each
`--config.<field>` a field, each `--config=<preset>` a preset that exists, and a value must read
as the field's type. Where it can run here, the fix is run too: its --config values applied to the
config that failed, the command run again. Every place in gptjax/ that writes `Fix:` (and every
call of the two helpers that write it for their callers) has a row; test_every_fix_has_a_row
fails for one without.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import io
import json
import math
import os
import re
import sys
import types
from typing import Callable

import numpy as np
import pytest

from gptjax import config as config_lib
from gptjax import presets
from gptjax.errors import UserError

from conftest import GPT2_TIKTOKEN, REPO_ROOT, TEXT, tiny_config

PACKAGE_DIR = os.path.join(REPO_ROOT, "gptjax")
TOOLS_DIR = os.path.join(REPO_ROOT, "tools")
# The helpers that write "Fix:" for their callers: each call is a message of its own.
HELPERS = {
    "gptjax/config.py": "fail",
    "gptjax/hf_gpt2.py": "_fail",
    "gptjax/model_config.py": "_fail"
}
COMMANDS = ("train", "sample", "plan", "prepare", "convert", "show_configs", "calculate_params",
            "accelerator_check", "eval", "compare")
TAKES_CONFIG = ("train", "plan", "show_configs", "calculate_params")

# --- The places that write a fix ----------------------------------------------------------------


def fix_sites() -> list[tuple[str, int, str]]:
  """(file, line, statement) of every statement in gptjax/ and tools/ whose text holds "Fix:", and
  of every call of a HELPERS function (the helper's own statement is covered by its calls)."""
  sites = []
  for root, _, names in [*os.walk(PACKAGE_DIR), *os.walk(TOOLS_DIR)]:
    for name in sorted(n for n in names if n.endswith(".py")):
      path = os.path.join(root, name)
      relative = os.path.relpath(path, REPO_ROOT)
      source = open(path, encoding="utf-8").read()
      helper = HELPERS.get(relative)
      for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.stmt) or isinstance(
            node, (ast.FunctionDef, ast.ClassDef, ast.If, ast.For, ast.While, ast.Try, ast.With)):
          continue
        text = " ".join((ast.get_source_segment(source, node) or "").split())
        calls_helper = helper and any(
            isinstance(call, ast.Call) and getattr(call.func, "id", None) == helper
            for call in ast.walk(node))
        is_helper = helper and f'raise CheckpointError(f"{{where}}: {{problem}}. Fix:' in text or (
            helper and 'raise ConfigError(f"config field {field!r}: {message}. Fix:' in text)
        if ("Fix:" in text or calls_helper) and not is_helper:
          sites.append((relative, node.lineno, text))
  return sites


# --- Checking a fix ------------------------------------------------------------------------------


def command_flags(command: str) -> set[str]:
  from absl import flags
  values = flags.FlagValues()
  importlib.import_module(f"gptjax.{command}").define_flags(values)
  names = {values[name].name for name in values} | {"help"}
  return names | {"config"} if command in TAKES_CONFIG else names


def check_flag(command: str, name: str, value: str | None, message: str) -> None:
  where = (command, name, value, message)
  assert command in COMMANDS, where
  concrete = value and not re.search(r"[<>]|\.\.\.|^\$|^$", value)
  if name == "config" or name.startswith("config."):
    assert command in TAKES_CONFIG, where
  if name == "config":
    if concrete:
      presets.resolve(value)  # a preset that exists
    return
  if name.startswith("config."):
    field = name[len("config."):]
    base = config_lib.get_base_config()
    presets.check_field_path(base, field, source=f"--{name}")
    if concrete:
      presets.check_field_value(base, field, value)
    return
  names = command_flags(command)
  assert name in names or (name.startswith("no") and name[2:] in names), where


_FLAG = re.compile(r"(?<![\w.$/=-])--([a-z](?:[\w.]*\w)?)(?:=(\S*))?")


def check_fix(message: str, command: str | None) -> None:
  """The flags and commands of every `Fix:` in `message` exist for the command they belong to."""
  assert "Fix:" in message, message
  assert not re.search(r"\b(issue|session)s?\b", message, re.I), message
  for fix in message.split("Fix:")[1:]:
    fix = fix.split("\n")[0]
    assert "python -m gptjax" not in re.sub(r"`[^`]*`", "", fix), ("a command outside `...`", fix)
    outside = re.sub(r"`[^`]*`", " ", fix)
    for quoted in re.findall(r"`([^`]*)`", fix):
      named = re.match(r"python -m gptjax\.(\w+)(.*)", quoted)
      if named:
        for name, value in _FLAG.findall(named.group(2)):
          check_flag(named.group(1), name, value.rstrip(".,;)"), message)
    for name, value in _FLAG.findall(outside):
      assert command is not None, ("a flag in a library message", name, message)
      check_flag(command, name, value.rstrip(".,;)"), message)


def applied(config, message: str, only: tuple[str, ...] = ()):
  """`config` with the concrete --config.<field>=<value> of the message's fix set, as absl would
  read them: those of `only` where given, else those of its first alternative (up to ", or")."""
  fix = message.split("Fix:", 1)[1]
  fix = fix if only else fix.split(", or ")[0]
  for name, value in _FLAG.findall(fix):
    value = value.rstrip(".,;)")
    if not name.startswith("config.") or (only and name[len("config."):] not in only):
      continue
    node, keys = config, name[len("config."):].split(".")
    for key in keys[:-1]:
      node = node[key]
    current = node[keys[-1]]
    node[keys[-1]] = (value.lower() in ("true", "1") if isinstance(current, bool) else
                      type(current)(value) if not isinstance(current, str) else value)
  return config


# --- The table -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
  file: str
  fragment: str  # a piece of the statement's source that names the site
  command: str | None  # the command the message reaches the user from (None: library only)
  trigger: Callable  # (ctx) -> the message; runs the fix where it can

  def __str__(self) -> str:
    return f"{self.file}:{self.fragment[:40]}"


ROWS: list[Row] = []


def row(file: str, fragment: str, command: str | None):

  def register(trigger):
    ROWS.append(Row(file, fragment, command, trigger))
    return trigger

  return register


class Ctx:
  """What a row needs: a tmp directory, monkeypatch, in-process commands, tiny configs."""

  def __init__(self, tmp_path, monkeypatch, run_cli):
    self.tmp, self.monkeypatch, self.run_cli = tmp_path, monkeypatch, run_cli

  def config(self, **overrides):
    return tiny_config(self.tmp, **overrides)

  def error(self, function, *args, **kwargs) -> str:
    with pytest.raises(UserError) as error:
      function(*args, **kwargs)
    return str(error.value)

  def cli(self, command: str, *args: str) -> tuple[int, str, str]:
    return self.run_cli(command, *args)

  def cli_error(self, command: str, *args: str) -> str:
    code, out, err = self.cli(command, *args)
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err, (code, out, err)
    return err[len("error: "):]

  def file(self, name: str, content: str | bytes = TEXT) -> str:
    path = self.tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)

  def prepared(self, name="data", tokenizer="bytes", **options) -> str:
    from gptjax.data import prepare
    out = str(self.tmp / name)
    prepare.prepare(
        prepare.Options(inputs=[self.file(f"{name}_in.txt", TEXT * 3)],
                        tokenizer=tokenizer,
                        out_dir=out,
                        progress=False,
                        **options))
    return out

  def nanogpt_dir(self, train: np.ndarray, val: np.ndarray | None, name="nanogpt") -> str:
    directory = self.tmp / name
    directory.mkdir()
    train.astype(np.uint16).tofile(directory / "train.bin")
    if val is not None:
      val.astype(np.uint16).tofile(directory / "val.bin")
    return str(directory)


@pytest.fixture
def ctx(tmp_path, monkeypatch, cli):
  monkeypatch.chdir(tmp_path)
  return Ctx(tmp_path, monkeypatch, cli)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny run directory trained 2 steps (byte-level), to copy."""
  from gptjax.training.loop import train
  config = tiny_config(tmp_path_factory.mktemp("trained"), max_iters=2, eval_interval=2)
  train(config)
  return config


def copy_of(trained_config, ctx: Ctx):
  import shutil
  config = ctx.config()
  shutil.copytree(os.path.join(trained_config.out_dir, "tiny"),
                  os.path.join(config.out_dir, "tiny"))
  return config


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A tiny Hugging Face GPT-2 directory written by gptjax (vocab 257: bytes fit)."""
  return _hf_directory(tmp_path_factory.mktemp("hf"), vocab_size=257)


def _hf_directory(directory, vocab_size: int, n_positions: int = 16) -> str:
  import jax
  import jax.numpy as jnp
  from gptjax import hf_gpt2
  from gptjax.config import ModelConfig
  from gptjax.model import GPT
  model = GPT(ModelConfig(vocab_size, n_positions, n_layer=1, n_head=2, n_embd=32, bias=True))
  params = model.init(jax.random.key(0), jnp.zeros((1, n_positions), jnp.int32))["params"]
  hf_gpt2.save_hf_gpt2(model, params, str(directory))
  return str(directory)


# The rows: one per place, in the order of the files. `ctx` holds tmp_path; `trained` and
# `hf_dir` are module fixtures that a row asks for by its parameter names.

# gptjax/accelerator_check.py, accelerator_steps.py, calculate_params.py, checkpoint.py, cli.py,
# command_line.py


@row("gptjax/accelerator_check.py", "not a directory it can write its report into",
     "accelerator_check")
def _(ctx):
  return ctx.cli_error("accelerator_check", f"--out_dir={ctx.file('report.md')}")


@row("gptjax/accelerator_check.py", "cannot write there", "accelerator_check")
def _(ctx):
  return ctx.cli_error("accelerator_check", "--out_dir=/proc/accel_report")


@row("gptjax/accelerator_steps.py", "is not a step", "accelerator_check")
def _(ctx):
  # The command's --step flag is an enum (absl refuses other names first); the worker checks too.
  from gptjax import accelerator_steps
  message = ctx.error(accelerator_steps.run_worker, "speed", str(ctx.tmp), True, ["xla"], 8)
  for step in re.search(r"one of (.*)\.$", message).group(1).split(", "):
    code, out, err = ctx.cli("accelerator_check", f"--out_dir={ctx.tmp}", f"--step={step}",
                             "--help")
    assert code == 0, (step, err)
  return message


@row("gptjax/calculate_params.py", "missing {", "calculate_params")
def _(ctx):
  message = ctx.cli_error("calculate_params", "--config.n_layer=2")
  code, out, err = ctx.cli("calculate_params", "--config.n_layer=2", "--config.n_embd=32",
                           "--config.n_head=2", "--config.block_size=16")
  assert code == 0, (out, err)
  return message


@row("gptjax/checkpoint.py", "holds no checkpoints", "sample")
def _(ctx):
  return ctx.cli_error("sample", f"--run_dir={ctx.tmp}")


@row("gptjax/checkpoint.py", "holds no finished checkpoint", "sample")
def _(ctx):
  (ctx.tmp / "run" / "checkpoints").mkdir(parents=True)
  return ctx.cli_error("sample", f"--run_dir={ctx.tmp / 'run'}")


@row("gptjax/checkpoint.py", "can be read", "train")
def _(ctx, trained):
  from conftest import damage
  from gptjax.training import run
  config = copy_of(trained, ctx)
  directory = os.path.join(config.out_dir, "tiny", "checkpoints")
  for step in os.listdir(directory):
    damage(os.path.join(directory, step))
  message = ctx.cli_error("sample", f"--run_dir={os.path.join(config.out_dir, 'tiny')}")
  config.model_name = re.search(r"--config.model_name=(\w+)", message).group(1)
  assert config.model_name == "tiny_2"
  run.check_resume(config)  # a new run there has nothing to resume
  return message


@row("gptjax/checkpoint.py", "has no checkpoint at step {which}", "eval")
def _(ctx, trained):
  run_dir = os.path.join(trained.out_dir, "tiny")
  message = ctx.cli_error("eval", f"--run_dir={run_dir}", "--checkpoint=5")
  for step in re.search(r"\(it has (.*?)\)", message).group(1).split(", "):
    assert ctx.cli("eval", f"--run_dir={run_dir}", f"--checkpoint={step}")[0] == 0
  return message


@row("gptjax/cli.py", "see --help.", "sample")
def _(ctx):
  return ctx.cli_error("sample", "--run_dir=x", "--num_samples=many")


@row("gptjax/command_line.py", "unknown flag --{name}", "plan")
def _(ctx):
  return ctx.cli_error("plan", "--config=tiny_char", "--targt=local")


@row("gptjax/command_line.py", "unexpected argument", "sample")
def _(ctx):
  return ctx.cli_error("sample", "--run_dir=x", "stray")


# gptjax/compare.py: the arms' flags, each fixed as its message says (the arms parsed and compared,
# not trained)


def _arms(message: str, common=()) -> list:
  """The arms of the --arm=... flags a fix names, parsed as gptjax.compare parses them."""
  from gptjax.training import compare
  fix = message.split("Fix:", 1)[1]
  return [
      compare.parse_arm(text.rstrip("."), list(common)) for text in re.findall(r"--arm=(\S+)", fix)
  ]


@row("gptjax/compare.py", "is not a list of distinct seeds", "compare")
def _(ctx):
  from gptjax import compare
  message = ctx.cli_error("compare", "--seeds=1,1", "--arm=a=tiny_char", "--arm=b=tiny_char")
  assert compare.parse_seeds(re.search(r"--seeds=(\S+?)\.$", message).group(1)) == [1, 2, 3]
  return message


@row("gptjax/compare.py", "give two or more --arm", "compare")
def _(ctx):
  from gptjax.training import compare
  message = ctx.cli_error("compare", "--arm=a=tiny_char")
  arms = _arms(message)
  assert len(arms) == 2 and not compare.unlike(arms), arms
  return message


@row("gptjax/compare.py", "repeat. Fix: give each arm its own name", "compare")
def _(ctx):
  return ctx.cli_error("compare", "--arm=a=tiny_char", "--arm=a=tiny_char,optimizer=muon")


@row("gptjax/compare.py", "the arms are not like for like", "compare")
def _(ctx):
  from gptjax.training import compare
  message = ctx.cli_error("compare", "--arm=a=tiny_char", "--arm=b=tiny_char,max_iters=16")
  # --set=max_iters=16 sets it for both arms (b's own override is the same)
  both = [compare.parse_arm(text, ["max_iters=16"]) for text in ("a=tiny_char", "b=tiny_char")]
  assert not compare.unlike(both)
  return message


# gptjax/config.py: validate's rules, each fixed by its own suggestion


def _validate_row(fragment: str, **overrides):

  @row("gptjax/config.py", fragment, "train")
  def _(ctx):
    config = ctx.config(**overrides)
    message = ctx.error(config_lib.validate, config)
    config_lib.validate(applied(config, message))
    return message


for _fragment, _overrides in (
    ("is not a finite number", dict(learning_rate=math.nan)),
    ("must be a positive integer", dict(n_layer=0)),
    ('fail("seed"', dict(seed=-1)),
    ("is negative\", f\"0 or more", dict(warmup_iters=-1)),
    ('"n_head", f"n_embd=', dict(n_embd=30, n_head=4)),
    ('fail("dropout"', dict(dropout=1.5)),
    ('"tokenizer", f"{config.tokenizer!r} is not a tokenizer"', dict(tokenizer="words")),
    ('fail("model_name"', dict(model_name="../elsewhere")),
    ('fail("data_dir"', dict(data_dir="data/x")),
    ('"vocab_size", f"{config.vocab_size} is smaller', dict(vocab_size=100)),
    ('fail("learning_rate"', dict(learning_rate=-1.0)),
    ('fail("min_lr"', dict(min_lr=1.0)),
    ('"lr_decay_iters", f"{config.lr_decay_iters}', dict(lr_decay_iters=1)),
    ('fail("optimizer"', dict(optimizer="lion")),
    ('fail("lr_schedule"', dict(lr_schedule="step")),
    ('fail("lr_decay_fraction"', dict(lr_decay_fraction=0.0)),
    ('fail("muon_learning_rate"', dict(muon_learning_rate=-0.02)),
    ("muon_momentum=0.95)[field]", dict(muon_momentum=1.0)),
    ("disables it", dict(grad_clip=-1.0)),
    ('fail("dtype"', dict(dtype="float8")),
    ('fail("dropout_rng"', dict(dropout_rng="philox")),
    ('fail("train_split"', dict(train_split=1.0)),
    ('fail("mesh",', dict(mesh=dict(data=-1, fsdp=-1))),
    ('fail("mesh.tensor"', dict(mesh=dict(tensor=3))),
):
  _validate_row(" ".join(_fragment.split()), **_overrides)

# gptjax/model_config.py: the rules of the model's options (part of validate), and the kernel the
# devices the step is compiled for cannot run


def _model_row(fragment: str, retyped: dict | None = None, **overrides):

  @row("gptjax/model_config.py", fragment, "train")
  def _(ctx):
    config = ctx.config(**overrides)
    with config.unlocked():  # a value of another type than the field's, as no flag could give
      for field, value in (retyped or {}).items():
        del config[field]
        config[field] = value
    message = ctx.error(config_lib.validate, config)
    config_lib.validate(applied(ctx.config(**overrides), message))
    return message


for _fragment, _overrides in (
    ('_fail("attention", f"{config.attention!r} is not an', dict(attention="sdpa")),
    ("'cudnn' (cuDNN's fused kernel) takes", dict(attention="cudnn")),
    ("cuts the sequence into blocks", dict(attention="splash", block_size=100)),
    ('"remat", f"{config.remat!r} is not a remat policy"', dict(remat="maybe")),
    ('_fail("loss_chunk_tokens"', dict(loss_chunk_tokens=-1)),
):
  _model_row(_fragment, **_overrides)
_model_row('_fail("scan_layers"', retyped=dict(scan_layers="yes"))
# the architecture options (model_config._validate_architecture_options)
for _fragment, _overrides in (
    ("is not one of", dict(positions="sinusoidal")),
    ("turns pairs of a head's dimensions", dict(positions="rope", n_embd=18, n_head=2)),
    ('_fail("rope_base"', dict(rope_base=0.5)),
    ("is not a whole number >= 0", dict(mlp_hidden=-1)),
    ("is not a multiple of n_kv_head", dict(n_head=2, n_kv_head=3)),
    ("cannot be split over mesh.tensor", dict(n_head=4, n_kv_head=1, mesh=dict(tensor=2))),
    ('_fail("logit_softcap"', dict(logit_softcap=-1.0)),
):
  _model_row(_fragment, **_overrides)
_model_row('f"{config[field]!r} is not true or false"', retyped=dict(qk_norm="yes"))


@row("gptjax/model_config.py", "and the step is", "train")
def _(ctx):
  config = ctx.config(attention="cudnn", dtype="bfloat16")
  message = ctx.error(config_lib.ModelConfig.from_config(config).for_platform, "cpu")
  config_lib.ModelConfig.from_config(applied(config, message)).for_platform("cpu")
  return message


# gptjax/convert.py, describe.py, devices.py, errors.py


@row("gptjax/convert.py", "already holds checkpoints", "convert")
def _(ctx, trained, hf_dir):
  from gptjax import convert
  config = copy_of(trained, ctx)
  return ctx.error(convert.import_to_run_dir, hf_dir, os.path.join(config.out_dir, "tiny"))


@row("gptjax/convert.py", "--out={run_dir!r}: {problem}", "convert")
def _(ctx, hf_dir):
  message = ctx.cli_error("convert", f"--from_hf={hf_dir}", "--out=/proc/gptjax/run")
  out = re.search(r"--out=(\S+?)\.$", message).group(1)
  assert ctx.cli("convert", f"--from_hf={hf_dir}", f"--out={out}")[0] == 0
  return message


@row("gptjax/describe.py", "input ended before", "calculate_params")
def _(ctx):
  ctx.monkeypatch.setattr(sys, "stdin", io.StringIO(""))
  return ctx.cli_error("calculate_params", "--interactive")


@row("gptjax/devices.py", "but JAX sees only the CPU", "train")
def _(ctx):
  from gptjax import devices
  ctx.monkeypatch.setattr(devices, "accelerator_hardware", lambda: "gpu")
  ctx.monkeypatch.delenv("JAX_PLATFORMS")
  message = ctx.error(devices.check_accelerator_used, False)
  devices.check_accelerator_used(applied(ctx.config(), message, only=("allow_cpu",)).allow_cpu)
  return message


@row("gptjax/errors.py", "no space left on", None)
def _(ctx):
  from gptjax import errors
  return str(errors.disk_full_error(str(ctx.tmp), "writing a checkpoint"))


# gptjax/eval.py


def _eval_flags(**values):
  flags = dict(run_dir="",
               init_from="",
               checkpoint="latest",
               data_dir="",
               input_file="",
               batch_size=64)
  return types.SimpleNamespace(**{**flags, **values})


@row("gptjax/eval.py", "are both set", "eval")
def _(ctx):
  return ctx.cli_error("eval", "--run_dir=r", "--data_dir=d", "--input_file=f")


@row("gptjax/eval.py", "needs text to evaluate on", "eval")
def _(ctx):
  from gptjax import eval as eval_lib
  message = ctx.cli_error("eval", "--init_from=gpt2")
  for flag in ("input_file", "data_dir"):
    eval_lib.check_flags(_eval_flags(init_from="gpt2", **{flag: "x"}))
  return message


@row("gptjax/eval.py", "is not a checkpoint. Fix", "eval")
def _(ctx):
  from gptjax import eval as eval_lib
  message = ctx.cli_error("eval", "--run_dir=r", "--checkpoint=last")
  for which in re.findall(r"--checkpoint=(\w+)", message):
    eval_lib.check_flags(_eval_flags(run_dir="r", checkpoint=which))
  return message


@row("gptjax/eval.py", "Hugging Face weights have no steps", "eval")
def _(ctx):
  return ctx.cli_error("eval", "--init_from=gpt2", "--input_file=x", "--checkpoint=best")


@row("gptjax/eval.py", "is out of range. Fix: 1 or more", "eval")
def _(ctx):
  from gptjax import eval as eval_lib
  message = ctx.cli_error("eval", "--run_dir=r", "--batch_size=0")
  fixed = int(re.findall(r"--batch_size=(\d+)", message)[-1])
  eval_lib.check_flags(_eval_flags(run_dir="r", batch_size=fixed))
  return message


@row("gptjax/eval.py", "holds tokens of", "eval")
def _(ctx, trained):
  run_dir = os.path.join(trained.out_dir, "tiny")
  other = ctx.prepared("hf_data", tokenizer=_tokenizer_json(ctx))
  message = ctx.cli_error("eval", f"--run_dir={run_dir}", f"--data_dir={other}")
  tokenizer = re.search(r"--tokenizer=(\S+)", message).group(1)
  assert ctx.cli("eval", f"--run_dir={run_dir}",
                 f"--data_dir={ctx.prepared('own', tokenizer=tokenizer)}")[0] == 0
  return message


@row("gptjax/eval.py", "does not say what data it trained on", "eval")
def _(ctx, trained):
  config = copy_of(trained, ctx)
  run_dir = os.path.join(config.out_dir, "tiny")
  os.remove(os.path.join(run_dir, "data.json"))
  message = ctx.cli_error("eval", f"--run_dir={run_dir}")
  assert ctx.cli("eval", f"--run_dir={run_dir}", f"--input_file={config.input_file}")[0] == 0
  return message


# gptjax/hf_gpt2.py


def _hf_config(ctx, **changes) -> str:
  directory = ctx.tmp / "broken_hf"
  directory.mkdir(exist_ok=True)
  values = dict(model_type="gpt2", n_layer=1, n_head=2, n_embd=32, n_positions=16, vocab_size=257)
  (directory / "config.json").write_text(json.dumps({**values, **changes}))
  return str(directory)


def _hf_error(ctx, directory) -> str:
  from gptjax import hf_gpt2
  return ctx.error(hf_gpt2.read_hf_gpt2, directory)


for _fragment, _make in (
    ('"no config.json" if', lambda ctx, hf: str(ctx.tmp)),
    ("unreadable ({e})\", \"re-download or re-export",
     lambda ctx, hf: ctx.file("u/config.json", "{") and str(ctx.tmp / "u")),
    ("not 'gpt2'", lambda ctx, hf: _hf_config(ctx, model_type="llama")),
    ("not a positive integer", lambda ctx, hf: _hf_config(ctx, n_layer=0)),
    ("gptjax runs standard GPT-2", lambda ctx, hf: _hf_config(ctx, activation_function="relu")),
    ("unreadable safetensors file", lambda ctx, hf:
     (_hf_config(ctx), ctx.file("broken_hf/model.safetensors", b"junk"))[0]),
    ("unreadable index", lambda ctx, hf:
     (_hf_config(ctx), ctx.file("broken_hf/model.safetensors.index.json", "[]"))[0]),
    ("needs torch, which is not installed", "torch"),
    ('unreadable ({type(e).__name__}: {e})", "re-download the checkpoint")', "torch_bad"),
    ("no weights (", lambda ctx, hf: _hf_config(ctx)),
    ("untied output head", "untied"),
    ("tensors do not match", "missing"),
    ("has shape {", "shape"),
):

  def _hf_row(ctx, hf_dir, _make=_make):
    from safetensors.numpy import load_file, save_file
    if callable(_make):
      return _hf_error(ctx, _make(ctx, hf_dir))
    directory = _hf_config(ctx)
    tensors = load_file(os.path.join(hf_dir, "model.safetensors"))
    if _make.startswith("torch"):
      ctx.file("broken_hf/pytorch_model.bin", b"junk")
      if _make == "torch":
        ctx.monkeypatch.setitem(sys.modules, "torch", None)
      else:
        pytest.importorskip("torch")
      return _hf_error(ctx, directory)
    if _make == "untied":
      tensors["lm_head.weight"] = tensors["transformer.wte.weight"] + 1
    elif _make == "missing":
      tensors.pop("transformer.ln_f.bias")
    else:
      tensors["transformer.wpe.weight"] = tensors["transformer.wpe.weight"][:-1]
    save_file(tensors, os.path.join(directory, "model.safetensors"))
    return _hf_error(ctx, directory)

  row("gptjax/hf_gpt2.py", _fragment, "convert")(_hf_row)


@row("gptjax/hf_gpt2.py", "how = (f\"Fix: download it", "train")
def _(ctx):
  from gptjax import hf_gpt2
  ctx.monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  ctx.monkeypatch.setenv("HF_HOME", str(ctx.tmp / "hf_home"))
  ctx.monkeypatch.delenv("HF_HUB_CACHE", raising=False)
  return ctx.error(hf_gpt2.resolve_hf, "gpt2")


@row("gptjax/hf_llama.py", "Llama format cannot hold", "convert")
def _(ctx):
  from gptjax import hf_llama
  from gptjax.config import ModelConfig
  from gptjax.model import GPT
  config = ctx.config(positions="rope", norm="rmsnorm", mlp="relu2", logit_softcap=30.0)
  message = ctx.error(hf_llama.save_hf_llama, GPT(ModelConfig.from_config(config)), None,
                      str(ctx.tmp / "x"))
  fixed = applied(config, message.replace("`", " "))  # the train command's settings
  assert hf_llama.export_problems(ModelConfig.from_config(fixed)) == []
  return message


@row("gptjax/training/evaluate.py", "runs in one process", "train")
def _(ctx):
  import jax
  from gptjax.config import ModelConfig
  from gptjax.model import GPT
  from gptjax.training.evaluate import WholeSplit
  model = GPT(ModelConfig.from_config(ctx.config()))
  ctx.monkeypatch.setattr(jax, "process_count", lambda: 2)
  return ctx.error(WholeSplit, model, np.zeros(100, np.int32), None)


@row("gptjax/training/evaluate.py", "less \" f\"than one window", "train")
def _(ctx):
  from gptjax.config import ModelConfig
  from gptjax.model import GPT
  from gptjax.training.evaluate import WholeSplit
  model = GPT(ModelConfig.from_config(ctx.config()))
  return ctx.error(WholeSplit, model, np.zeros(5, np.int32), None)


@row("gptjax/hf_gpt2.py", "is outside 1..", None)
def _(ctx, hf_dir):
  from gptjax import hf_gpt2
  model, params = hf_gpt2.load_hf_gpt2(hf_dir)
  return ctx.error(hf_gpt2.save_hf_gpt2, model, params, str(ctx.tmp / "x"), vocab_size=10**6)


@row("gptjax/hf_gpt2.py", "but the model \" f\"config needs", None)
def _(ctx, hf_dir):
  from gptjax import hf_gpt2
  model, params = hf_gpt2.load_hf_gpt2(hf_dir)
  other, _ = hf_gpt2.load_hf_gpt2(_hf_directory(ctx.tmp / "other", vocab_size=300))
  return ctx.error(hf_gpt2.save_hf_gpt2, other, params, str(ctx.tmp / "x"))


@row("gptjax/hf_gpt2.py", "is a file, not a directory", "train")
def _(ctx, hf_dir):
  from gptjax import hf_gpt2
  message = ctx.error(hf_gpt2.check_local, os.path.join(hf_dir, "config.json"))
  hf_gpt2.check_local(applied(ctx.config(), message).init_from)
  return message


@row("gptjax/hf_gpt2.py", "directory {name_or_dir!r} does not exist", "train")
def _(ctx):
  from gptjax import hf_gpt2
  return ctx.error(hf_gpt2.check_local, "./missing")


@row("gptjax/hf_gpt2.py", "architecture differs from", None)
def _(ctx, hf_dir):
  import flax.linen as nn
  from gptjax import hf_gpt2
  from gptjax.config import ModelConfig
  from gptjax.params import abstract_params
  config = ctx.config(init_from=hf_dir, vocab_size=257, bias=True, n_layer=2)
  return ctx.error(hf_gpt2.init_params_from, config,
                   nn.meta.unbox(abstract_params(ModelConfig.from_config(config))))


# gptjax/prepare.py, presets.py, sample.py


@row("gptjax/prepare.py", "is outside its range", "prepare")
def _(ctx):
  return ctx.cli_error("prepare", "--input=x", "--tokenizer=bytes", "--out_dir=y", "--num_proc=-1")


@row("gptjax/presets.py", "no preset of that name", "train")
def _(ctx):
  return ctx.error(presets.resolve, "tiny_chr")


@row("gptjax/presets.py", "preset directory {root!r} does not exist", "show_configs")
def _(ctx):
  return ctx.cli_error("show_configs", f"--configs_dir={ctx.tmp / 'missing'}")


@row("gptjax/planner/memory_table.py", "has no row in the memory table", "show_configs")
def _(ctx):
  return ctx.cli_error("show_configs", "--memory", "--analytic",
                       "--presets=recipes/shakespeare_char_cpu")


@row("gptjax/presets.py", "config file {preset!r} does not exist", "train")
def _(ctx):
  ctx.monkeypatch.chdir(REPO_ROOT)
  return ctx.cli_error("train", "--config=configs/150M.json")


@row("gptjax/presets.py", "has no get_config() function", "train")
def _(ctx):
  return ctx.error(presets.load, ctx.file("empty_preset.py", "x = 1\n"))


@row("gptjax/presets.py", "not \" f\"a ConfigDict", "train")
def _(ctx):
  return ctx.error(presets.load, os.path.join(REPO_ROOT, "tests/data/not_a_configdict_preset.py"))


@row("gptjax/presets.py", "get_config() raised", "train")
def _(ctx):
  return ctx.error(presets.load, os.path.join(REPO_ROOT, "tests/data/raising_preset.py"))


@row("gptjax/presets.py", "is not valid JSON", "train")
def _(ctx):
  return ctx.error(presets.load, ctx.file("bad.json", "{"))


@row("gptjax/presets.py", "must be {kind}, got", "train")
def _(ctx):
  return ctx.error(presets.load, ctx.file("typed.json", '{"n_layer": "four"}'))


@row("gptjax/presets.py", "is not {words}. Fix: give", "train")
def _(ctx):
  return ctx.cli_error("train", "--config=tiny_char", "--config.max_iters=abc")


@row("gptjax/sample.py", "is outside its range: {words}", "sample")
def _(ctx):
  return ctx.cli_error("sample", "--run_dir=x", "--top_p=1.5", "--temperature=-1",
                       "--num_samples=0")


@row("gptjax/sample.py", "an empty text stops nothing", "sample")
def _(ctx):
  return ctx.cli_error("sample", "--run_dir=x", "--stop=")


@row("gptjax/sample.py", "has no end-of-text token", "sample")
def _(ctx, trained):
  run_dir = os.path.join(trained.out_dir, "tiny")
  message = ctx.cli_error("sample", f"--run_dir={run_dir}", "--stop_at_eot")
  assert ctx.cli("sample", f"--run_dir={run_dir}", "--stop=\n\n", "--max_new_tokens=2")[0] == 0
  return message


@row("gptjax/sample.py", "--prompt FILE:{path}: cannot read", "sample")
def _(ctx):
  return ctx.cli_error("sample", "--run_dir=x", f"--prompt=FILE:{ctx.tmp / 'missing.txt'}")


# gptjax/sharding.py


@row("gptjax/sharding.py", "devices, but {num_devices} are present", "train")
def _(ctx):
  from gptjax import sharding
  config = ctx.config(mesh=dict(data=2, fsdp=1))
  message = ctx.error(sharding.mesh_shape, config, 1)
  sharding.mesh_shape(applied(config, message), 1)
  return message


@row("gptjax/sharding.py", "is not divisible by mesh data x fsdp", "train")
def _(ctx):
  from gptjax import sharding
  config = ctx.config(batch_size=3)
  message = ctx.error(sharding.validate_for_mesh, config, (2, 1, 1))
  sharding.validate_for_mesh(applied(config, message), (2, 1, 1))
  return message


@row("gptjax/sharding.py", "cannot fill", "train")
def _(ctx):
  from gptjax import sharding
  config = ctx.config(mesh=dict(data=3, fsdp=-1))
  message = ctx.error(sharding.mesh_shape, config, 4)
  sharding.mesh_shape(applied(config, message), 4)
  return message


@row("gptjax/sharding.py", "is not divisible by mesh.tensor=", "train")
def _(ctx):
  from gptjax import sharding
  config = ctx.config(vocab_size=257)
  message = ctx.error(sharding.validate_for_mesh, config, (1, 1, 2))
  sharding.validate_for_mesh(applied(config, message, only=("vocab_size",)), (1, 1, 2))
  return message


@row("gptjax/sharding.py", "needs num_processes and process_id", "train")
def _(ctx):
  from gptjax import sharding
  for name in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    ctx.monkeypatch.delenv(name, raising=False)
  config = ctx.config(distributed=dict(coordinator_address="10.0.0.1:1234"))
  return ctx.error(sharding.maybe_initialize_distributed, config)


@row("gptjax/sharding.py", "were asked for after JAX had started", "train")
def _(ctx):
  import jax
  from gptjax import sharding
  jax.devices()  # JAX has started
  return ctx.error(sharding.use_cpu_devices, 3)


# gptjax/store.py


@row("gptjax/store.py", "reading it needs gcsfs", "train")
def _(ctx):
  import configparser
  from gptjax import store
  ctx.monkeypatch.setitem(sys.modules, "gcsfs", None)  # not installed
  message = ctx.error(store.exists, "gs://bucket/runs/tiny")
  extras = configparser.ConfigParser()
  extras.read(os.path.join(REPO_ROOT, "setup.cfg"))
  assert "gcsfs" in extras["options.extras_require"]["gcs"].split(), "the gcs extra the fix names"
  return message


# gptjax/training


@row("gptjax/training/compare.py", "is not NAME=PRESET[,field=value...]. Fix", "compare")
def _(ctx):
  message = ctx.cli_error("compare", "--arm=tiny_char", "--arm=b=tiny_char")
  assert [arm.config.optimizer for arm in _arms(message)] == ["muon"]
  return message


@row("gptjax/training/compare.py", "has no evaluation with bits per byte", "compare")
def _(ctx):
  from gptjax.training import compare
  ctx.file("runs/a-seed1/metrics.jsonl", '{"step": 1, "train_loss": 5.0, "step_time_ms": 9.0}\n')
  return ctx.error(compare.read_curve, str(ctx.tmp / "runs" / "a-seed1"), ctx.config())


@row("gptjax/training/compare.py", "is not field=value. Fix", "compare")
def _(ctx):
  from gptjax.training import compare
  message = ctx.cli_error("compare", "--arm=a=tiny_char,optimizer", "--arm=b=tiny_char")
  fixed = re.search(r"e\.g\. (\S+?)\.$", message).group(1)
  assert compare.parse_arm(f"a=tiny_char,{fixed}", []).config.optimizer == "muon"
  return message


@row("gptjax/training/compare.py", "is not a config field. Fix", "compare")
def _(ctx):
  from gptjax.training import compare
  message = ctx.cli_error("compare", "--arm=a=tiny_char,optimiser=muon", "--arm=b=tiny_char")
  fixed = re.search(r"e\.g\. (\S+?)\.$", message).group(1)
  assert compare.parse_arm(f"a=tiny_char,{fixed}", []).config.optimizer == "muon"
  code, out, _ = ctx.cli("train", "--help")
  assert code == 0 and f"--config.{fixed.split('=')[0]}=" in out, "train --help lists the field"
  return message


@row("gptjax/training/compare.py", "is not a {type(current).__name__}", "compare")
def _(ctx):
  from gptjax.training import compare
  message = ctx.cli_error("compare", "--arm=a=tiny_char,max_iters=many", "--arm=b=tiny_char")
  fixed = re.search(r"e\.g\. (\S+?)\.$", message).group(1)
  assert compare.parse_arm(f"a=tiny_char,{fixed}", []).config.max_iters == int(fixed.split("=")[1])
  return message


class _Bucket:
  """An in-memory stand-in for google-cloud-storage's Client: each object's bytes and generation,
  with its conditional writes (`if_generation_match`) and NotFound, as the lease uses them."""

  def __init__(self):
    self.objects = {}

  def bucket(self, name):
    return types.SimpleNamespace(blob=lambda key: _Blob(self.objects, f"{name}/{key}"))


class _Blob:

  def __init__(self, objects, key):
    self.objects, self.key, self.generation = objects, key, None

  def download_as_bytes(self):
    from google.api_core import exceptions
    if self.key not in self.objects:
      raise exceptions.NotFound(self.key)
    data, self.generation = self.objects[self.key]
    return data

  def upload_from_string(self, data, if_generation_match):
    from google.api_core import exceptions
    if self.objects.get(self.key, (b"", 0))[1] != if_generation_match:
      raise exceptions.PreconditionFailed(self.key)
    self.generation = if_generation_match + 1
    self.objects[self.key] = (data, self.generation)


@row("gptjax/training/lease.py", "is in use by another training", "train")
def _(ctx):
  import socket
  from google.cloud import storage
  from gptjax.training import lease
  bucket = _Bucket()
  ctx.monkeypatch.setattr(storage, "Client", lambda: bucket)
  # Held by a process that runs on this host (this one's parent): alive, no waiting for the ttl.
  holder = dict(pid=os.getppid(), host=socket.gethostname(), since="2026-01-01 00:00:00")
  bucket.objects["b/runs/tiny/lock"] = (json.dumps(holder).encode(), 7)
  message = ctx.error(lease.LeaseLock("gs://b/runs/tiny").acquire)
  name = re.search(r"--config.model_name=(\S+)", message).group(1).rstrip(".")
  other = lease.LeaseLock(f"gs://b/runs/{name.replace('<new name>', 'tiny_2')}").acquire()
  other.release()
  return message


@row("gptjax/training/lock.py", "is in use by another training", "train")
def _(ctx):
  from gptjax.training.lock import RunLock
  held = RunLock(str(ctx.tmp / "run")).acquire()
  try:
    return ctx.error(RunLock(str(ctx.tmp / "run")).acquire)
  finally:
    held.release()


@row("gptjax/training/lock.py", "cannot be made", "train")
def _(ctx):
  from gptjax.training.lock import RunLock
  return ctx.error(RunLock("/proc/gptjax/run").acquire)


@row("gptjax/training/loop.py", "was taken over by another training", "train")
def _(ctx):
  from gptjax.training import loop, run

  class TakenOver(run.RunLock):
    """The run's lock, as a lease that another training took over after the first step."""
    lost = True

  ctx.monkeypatch.setattr(run, "RunLock", TakenOver)
  config = ctx.config(max_iters=2, eval_interval=2)
  message = ctx.error(loop.train, config)
  assert not os.path.isdir(os.path.join(config.out_dir, "tiny", "checkpoints", "1"))  # not saved
  return message


@row("gptjax/training/metrics.py", "training loss became", "train")
def _(ctx):
  from gptjax.training import metrics
  recorder = types.SimpleNamespace(last_checkpoint=lambda: 4, config=ctx.config())
  recorder.skipped_updates = lambda step, values: metrics.Recorder.skipped_updates(
      recorder, step, values)  # 0: skip_nonfinite_updates is off
  return ctx.error(metrics.Recorder.read, recorder, 5, {"loss": np.float32("nan")})


@row("gptjax/training/metrics.py", "updates in a row up to step", "train")
def _(ctx):
  from gptjax.training import metrics
  config = ctx.config(skip_nonfinite_updates=3)
  recorder = types.SimpleNamespace(config=config, last_checkpoint=lambda: 4)
  message = ctx.error(metrics.Recorder.skipped_updates, recorder, 9,
                      dict(skipped_total=3, skipped_in_a_row=3))
  config_lib.validate(applied(config, message, only=("z_loss", "dtype")))
  return message


@row("gptjax/training/metrics.py", "is not a JSON record", "train")
def _(ctx):
  from gptjax.training import metrics
  return ctx.error(metrics.read_records, ctx.file("metrics.jsonl", '{"step": 1}\nnot json\n{}\n'))


@row("gptjax/training/profile.py", "is not a range of steps A:B", "train")
def _(ctx):
  from gptjax.training.profile import profile_range
  message = ctx.cli_error("train", "--config=tiny_char", "--config.profile_steps=12:10")
  assert profile_range(applied(ctx.config(), message).profile_steps) == (10, 12)
  # Both alternatives applied in turn: the last, "--config.profile_steps=", is no trace.
  assert profile_range(applied(ctx.config(), message,
                               only=("profile_steps",)).profile_steps) is None
  return message


@row("gptjax/training/run.py", "--config.out_dir={config.out_dir!r}: {problem}", "train")
def _(ctx):
  from gptjax.training import run
  config = ctx.config(out_dir="/proc/gptjax/out")
  message = ctx.error(run.check_out_dir, config)
  run.check_out_dir(applied(config, message))
  return message


@row("gptjax/training/run.py", "holds a different architecture", "train")
def _(ctx, trained):
  from gptjax.training import run
  config = copy_of(trained, ctx)
  config.n_layer = 3
  message = ctx.error(run.check_resume, config)
  run.check_resume(applied(config, message))
  return message


@row("gptjax/training/run.py", "trained with other settings", "train")
def _(ctx, trained):
  from gptjax.training import run
  config = copy_of(trained, ctx)
  config.batch_size = 2
  message = ctx.error(run.check_resume, config)
  for field in ("model_name", "resume_with_changes"):  # either way on works
    run.check_resume(applied(config.copy_and_resolve_references(), message, only=(field,)))
  return message


@row("gptjax/training/run.py", "was trained with optimizer=", "train")
def _(ctx, trained):
  from gptjax.training import run
  config = copy_of(trained, ctx)
  config.optimizer, config.input_file = "muon", trained.input_file
  message = ctx.error(run.check_resume, config)
  for field in ("optimizer", "model_name"):  # either way on works
    run.check_resume(applied(config.copy_and_resolve_references(), message, only=(field,)))
  return message


@row("gptjax/training/run.py", "whose optimizer state", "train")
def _(ctx, trained):
  from gptjax.training import run
  config = copy_of(trained, ctx)
  config.skip_nonfinite_updates, config.resume_with_changes = 3, True  # past check_resume
  run.check_resume(config)
  step, meta = run.saved_meta(run.run_directory(config))
  message = ctx.error(run.check_optimizer_kind, config, meta["config"], step)
  fixed = applied(config.copy_and_resolve_references(), message, only=("skip_nonfinite_updates",))
  run.check_optimizer_kind(fixed, meta["config"], step)
  run.check_resume(applied(config.copy_and_resolve_references(), message, only=("model_name",)))
  return message


# gptjax/planner


@row("gptjax/planner/fit.py", "the train step needs {gib(needed)}", "plan")
def _(ctx):
  from gptjax.planner import fit, targets
  return fit.memory_problem(ctx.config(), targets.parse_target("gpu-l4-24gb"), 10**12, "test")


def _checked(ctx, config) -> str:
  from gptjax.planner import fit, targets
  ctx.monkeypatch.setattr(fit.estimate_lib, "estimate",
                          lambda *args, **kwargs: types.SimpleNamespace(fits=True))
  problems, _ = fit.check(config, targets.parse_target("gpu-l4-24gb"))
  assert len(problems) == 1, problems
  return problems[0]


@row("gptjax/planner/fit.py", "config field 'input_file': {config.input_file!r}", "plan")
def _(ctx):
  return _checked(ctx, ctx.config(input_file=str(ctx.tmp / "missing.txt")))


@row("gptjax/planner/fit.py", "are not cached here", "plan")
def _(ctx):
  ctx.monkeypatch.delenv("GPTJAX_GPT2_TIKTOKEN", raising=False)
  ctx.monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(ctx.tmp / "empty_cache"))
  return _checked(ctx, ctx.config(tokenizer="gpt2", vocab_size=50304))


@row("gptjax/planner/fit.py", "ran out of memory", "train")
def _(ctx):
  import jax
  from gptjax.planner import fit, search
  fewest = search.fewest_changes_that_fit
  ctx.monkeypatch.setattr(fit, "fewest_changes_that_fit",
                          lambda config, target, compile: fewest(config, target, compile=False))

  def out_of_memory():
    with fit.explain_out_of_memory(ctx.config()):
      raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 9 GiB")

  return ctx.error(out_of_memory)


@row("gptjax/planner/report.py", "no configuration of", "plan")
def _(ctx):
  from gptjax.planner import report, targets
  return "\n".join(
      report._format_found([], [], ctx.config(), "cmd", targets.parse_target("gpu-l4-24gb")))


@row("gptjax/planner/targets.py", "is not a target", "plan")
def _(ctx):
  return ctx.cli_error("plan", "--config=tiny_char", "--target=tpu-v9")


@row("gptjax/planner/targets.py", "slice of that size", "plan")
def _(ctx):
  return ctx.cli_error("plan", "--config=tiny_char", "--target=tpu-v5e-3")


@row("gptjax/planner/targets.py", "GPUs. Fix:", "plan")
def _(ctx):
  return ctx.cli_error("plan", "--config=tiny_char", "--target=12xgpu-h100-80gb")


# gptjax/data/dataset.py


def _open(ctx, config) -> str:
  from gptjax.data import dataset
  return ctx.error(dataset.open_tokens, config)


@row("gptjax/data/dataset.py", "is a directory, not a text file", "train")
def _(ctx):
  from gptjax.data import dataset
  corpus = ctx.tmp / "corpus"
  ctx.file("corpus/a.txt"), ctx.file("corpus/b.txt", TEXT[::-1])
  message = ctx.error(dataset.check_sources, ctx.config(input_file=str(corpus)))
  command = re.search(r"`python -m gptjax.prepare (.*?)`", message).group(1).split()
  code, out, _ = ctx.cli("prepare",
                         *(a.replace("--tokenizer=...", "--tokenizer=bytes") for a in command))
  assert code == 0, out
  dataset.open_tokens(applied(ctx.config(input_file=""), message))
  return message


@row("gptjax/data/dataset.py", "does not exist. Fix: give the path", "train")
def _(ctx):
  from gptjax.data import dataset
  return ctx.error(dataset.check_sources, ctx.config(input_file=str(ctx.tmp / "none.txt")))


@row("gptjax/data/dataset.py", "is empty. Fix: give a file", "train")
def _(ctx):
  from gptjax.data import dataset
  return ctx.error(dataset.check_sources, ctx.config(input_file=ctx.file("empty.txt", "")))


@row("gptjax/data/dataset.py", "is a file, not a directory of token shards", "train")
def _(ctx):
  from gptjax.data import dataset
  text = ctx.file("corpus.txt", TEXT * 3)
  message = ctx.error(dataset.check_sources, ctx.config(input_file="", data_dir=text))
  dataset.open_tokens(applied(ctx.config(input_file="", data_dir=""), message, ("input_file",)))
  return message


@row("gptjax/data/dataset.py", "{where} does not exist. Fix: prepare it", "train")
def _(ctx):
  return _open(ctx, ctx.config(input_file="", data_dir=str(ctx.tmp / "data")))


@row("gptjax/data/dataset.py", "gives only \" + \"", "train")
def _(ctx):
  from gptjax.data import dataset
  config = ctx.config(input_file=ctx.file("three.txt", "abc"))
  message = _open(ctx, config)
  dataset.open_tokens(applied(config, message, only=("block_size",)))
  return message


@row("gptjax/data/dataset.py", "{where}: {problem}. Fix: prepare it again", "train")
def _(ctx):
  directory = ctx.prepared()
  os.truncate(os.path.join(directory, "train-00000.bin"), 10)
  return _open(ctx, ctx.config(input_file="", data_dir=directory))


@row("gptjax/data/dataset.py", "holds an unfinished gptjax.prepare", "train")
def _(ctx):
  (ctx.tmp / "empty_data").mkdir()
  return _open(ctx, ctx.config(input_file="", data_dir=str(ctx.tmp / "empty_data")))


@row("gptjax/data/dataset.py", "has train.bin but no val.bin", "train")
def _(ctx):
  return _open(ctx, ctx.config(input_file="", data_dir=ctx.nanogpt_dir(np.arange(100), None)))


@row("gptjax/data/dataset.py", "holds nanoGPT's meta.pkl", "train")
def _(ctx):
  directory = ctx.nanogpt_dir(np.arange(100), np.arange(50))
  ctx.file("nanogpt/meta.pkl", b"\x80")
  return _open(ctx, ctx.config(input_file="", data_dir=directory))


@row("gptjax/data/dataset.py", "without gptjax's meta.json", "train")
def _(ctx):
  from gptjax.data import dataset
  config = ctx.config(input_file="",
                      data_dir=ctx.nanogpt_dir(np.arange(65), np.arange(65)),
                      tokenizer="auto")
  message = _open(ctx, config)
  assert dataset.open_tokens(applied(config, message)).tokenizer.name == "bytes"
  return message


@row("gptjax/data/dataset.py", "past the {kind} tokenizer's", "train")
def _(ctx):
  from gptjax.data import dataset
  config = ctx.config(input_file="", data_dir=ctx.nanogpt_dir(np.arange(400), np.arange(300)))
  message = _open(ctx, config)
  if os.path.isfile(GPT2_TIKTOKEN):
    config.vocab_size = 50304  # the GPT-2 preset the fix names
    assert dataset.open_tokens(applied(config, message)).tokenizer.name == "gpt2"
  return message


@row("gptjax/data/dataset.py", "was prepared with the tokenizer", "train")
def _(ctx):
  from gptjax.data import dataset
  config = ctx.config(input_file="", data_dir=ctx.prepared(), tokenizer="gpt2", vocab_size=50304)
  message = _open(ctx, config)
  config.vocab_size = 256
  dataset.open_tokens(applied(config, message))
  return message


@row("gptjax/data/dataset.py", "is too small for {where}", "train")
def _(ctx):
  from gptjax.data import dataset
  config = ctx.config(input_file="", data_dir=ctx.prepared(), tokenizer="auto", vocab_size=200)
  message = _open(ctx, config)
  dataset.open_tokens(applied(config, message))
  return message


@row("gptjax/data/dataset.py", "is not UTF-8 (byte", "train")
def _(ctx):
  from gptjax.data import dataset
  return ctx.error(dataset.read_corpus, ctx.file("latin1.txt", "café".encode("latin-1")))


@row("gptjax/data/dataset.py", "{path!r} is empty", "train")
def _(ctx):
  return _open(ctx, ctx.config(input_file="",
                               data_dir=ctx.nanogpt_dir(np.arange(100), np.arange(0))))


@row("gptjax/data/dataset.py", "is truncated ({os.path.getsize(path)", "train")
def _(ctx):
  directory = ctx.nanogpt_dir(np.arange(100), np.arange(50))
  with open(os.path.join(directory, "val.bin"), "ab") as f:
    f.write(b"\0")
  return _open(ctx, ctx.config(input_file="", data_dir=directory))


@row("gptjax/data/dataset.py", "was trained with the tokenizer", "train")
def _(ctx):
  from gptjax.data import dataset
  from gptjax.data.tokenizer import ByteTokenizer
  run_dir = ctx.tmp / "run"
  run_dir.mkdir()
  (run_dir / "data.json").write_text(
      json.dumps(dict(tokenizer=dict(kind="gpt2", vocab_size=50257, eot_id=50256))))
  data = dataset.TokenData(None, None, ByteTokenizer(), str(ctx.tmp))
  return ctx.error(dataset.record_run_data, str(run_dir), data, resuming=True)


# gptjax/data: encode.py, prepare.py, shards.py, sources.py


def _prepare_error(ctx, *inputs: str, **options) -> str:
  from gptjax.data import prepare
  return ctx.error(
      prepare.prepare,
      prepare.Options(inputs=list(inputs),
                      tokenizer=options.pop("tokenizer", "bytes"),
                      out_dir=options.pop("out_dir", str(ctx.tmp / "out")),
                      progress=False,
                      **options))


@row("gptjax/data/encode.py", "is not UTF-8 at byte", "prepare")
def _(ctx):
  return _prepare_error(ctx, ctx.file("latin1.txt", TEXT.encode() + "café".encode("latin-1")))


@row("gptjax/data/encode.py", "is binary, not text", "prepare")
def _(ctx):
  return _prepare_error(ctx, ctx.file("binary.dat", TEXT.encode() + b"\0\xff"))


@row("gptjax/data/encode.py", "has no text field", "prepare")
def _(ctx):
  path = ctx.file("docs.jsonl", '{"body": "a"}\n{"body": "b"}\n')
  message = _prepare_error(ctx, path)
  _prepare_error_free(ctx, path, text_field="body")
  return message


def _prepare_error_free(ctx, *inputs, **options) -> None:
  from gptjax.data import prepare
  prepare.prepare(
      prepare.Options(inputs=list(inputs),
                      tokenizer=options.pop("tokenizer", "bytes"),
                      out_dir=str(ctx.tmp / "fixed"),
                      progress=False,
                      **options))


@row("gptjax/data/encode.py", "is not a JSON line", "prepare")
def _(ctx):
  return _prepare_error(ctx, ctx.file("bad.jsonl", '{"text": "a"}\n{"text": \n'))


@row("gptjax/data/prepare.py", "is a file. Fix", "prepare")
def _(ctx):
  return _prepare_error(ctx, ctx.file("in.txt"), out_dir=ctx.file("out_file"))


@row("gptjax/data/prepare.py", "--out_dir={out_dir!r}: {problem}", "prepare")
def _(ctx):
  message = _prepare_error(ctx, ctx.file("in.txt"), out_dir="/proc/gptjax/data")
  out = re.search(r"--out_dir=(\S+?)\.$", message).group(1)
  assert ctx.cli("prepare", f"--input={ctx.tmp / 'in.txt'}", "--tokenizer=bytes",
                 f"--out_dir={out}")[0] == 0
  return message


@row("gptjax/data/prepare.py", "--val_fraction={options.val_fraction} is outside", "prepare")
def _(ctx):
  message = _prepare_error(ctx, ctx.file("in.txt"), val_fraction=1.5)
  _prepare_error_free(ctx, ctx.file("in.txt"), val_fraction=0.1)
  return message


@row("gptjax/data/prepare.py", "too little to split", "prepare")
def _(ctx):
  return _prepare_error(ctx, ctx.file("one_byte.txt", "a"))


@row("gptjax/data/prepare.py", "holds files gptjax.prepare did not write", "prepare")
def _(ctx):
  ctx.file("out/notes.md")
  return _prepare_error(ctx, ctx.file("in.txt"))


@row("gptjax/data/shards.py", "is not a gptjax data directory's metadata", "prepare")
def _(ctx):
  from gptjax.data import shards
  ctx.file("data/meta.json", "{")
  return ctx.error(shards.read_meta, str(ctx.tmp / "data"))


@row("gptjax/data/sources.py", "names no text file", "prepare")
def _(ctx):
  ctx.file("binaries/a.bin", b"\0\1\2")
  return _prepare_error(ctx, str(ctx.tmp / "binaries"))


def _datasets(ctx, module) -> str:
  ctx.monkeypatch.setitem(sys.modules, "datasets", module)
  return _prepare_error(ctx, hf_dataset="stories")


@row("gptjax/data/sources.py", "rows have no field", "prepare")
def _(ctx):
  return _datasets(ctx, types.SimpleNamespace(load_dataset=lambda *a, **k: iter([{
      "story": "once"
  }])))


@row("gptjax/data/sources.py", "needs the `datasets` package", "prepare")
def _(ctx):
  return _datasets(ctx, None)


@row("gptjax/data/sources.py", "could not be opened", "prepare")
def _(ctx):

  def offline(*args, **kwargs):
    raise ConnectionError("no network")

  return _datasets(ctx, types.SimpleNamespace(load_dataset=offline))


@row("gptjax/data/sources.py", "is an empty directory", "prepare")
def _(ctx):
  (ctx.tmp / "nothing").mkdir()
  return _prepare_error(ctx, str(ctx.tmp / "nothing"))


@row("gptjax/data/sources.py", "matches no file", "prepare")
def _(ctx):
  return _prepare_error(ctx, str(ctx.tmp / "*.nothing"))


@row("gptjax/data/sources.py", "does not exist. Fix: give a text or .jsonl", "prepare")
def _(ctx):
  return _prepare_error(ctx, str(ctx.tmp / "missing.txt"))


# gptjax/data/tokenizer.py


def _tokenizer_json(ctx, special=("<|endoftext|>",)) -> str:
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers
  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  trainer = trainers.BpeTrainer(vocab_size=280,
                                special_tokens=list(special),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator([TEXT], trainer)
  path = str(ctx.tmp / "tokenizer.json")
  tokenizer.save(path)
  return path


@row("gptjax/data/tokenizer.py", "has none of the end-of-text tokens", "prepare")
def _(ctx):
  return _prepare_error(ctx, ctx.file("in.txt"), tokenizer=_tokenizer_json(ctx, special=()))


@row("gptjax/data/tokenizer.py", "differs from the one the tokens were made with", "train")
def _(ctx):
  from gptjax.data import tokenizer
  spec = dict(tokenizer.HfTokenizer(_tokenizer_json(ctx)).spec(), sha256="0" * 64)
  return ctx.error(tokenizer.from_spec, spec)


@row("gptjax/data/tokenizer.py", "does not exist. Fix: give the path of a Hugging Face", "prepare")
def _(ctx):
  from gptjax.data import tokenizer
  return ctx.error(tokenizer.HfTokenizer, str(ctx.tmp / "missing.json"))


@row("gptjax/data/tokenizer.py", "--eot_token={eot_token!r} is not a token", "prepare")
def _(ctx):
  message = _prepare_error(ctx,
                           ctx.file("in.txt"),
                           tokenizer=_tokenizer_json(ctx),
                           eot_token="</s>")
  _prepare_error_free(ctx,
                      ctx.file("in.txt"),
                      tokenizer=str(ctx.tmp / "tokenizer.json"),
                      eot_token="none")
  return message


@row("gptjax/data/tokenizer.py", "GPT-2 BPE file {path!r} does not exist", "prepare")
def _(ctx):
  return _prepare_error(ctx,
                        ctx.file("in.txt"),
                        tokenizer="gpt2",
                        tokenizer_path=str(ctx.tmp / "gpt2.tiktoken"))


@row("gptjax/data/tokenizer.py", "GPT-2 BPE is not available", "sample")
def _(ctx):
  """Offline, GPT-2 sampling names sample's own --tokenizer_path, and with it samples (item 5)."""
  from gptjax.data import tokenizer
  if not os.path.isfile(GPT2_TIKTOKEN):
    pytest.skip("needs ../shared/data/gpt2.tiktoken")
  ctx.monkeypatch.delenv(tokenizer.GPT2_TIKTOKEN_ENV, raising=False)

  def offline(name):
    raise ConnectionError("no network")

  ctx.monkeypatch.setattr(tokenizer.tiktoken, "get_encoding", offline)
  hf = _hf_directory(ctx.tmp / "hf_gpt2_vocab", vocab_size=50257)
  message = ctx.cli_error("sample", f"--init_from={hf}", "--max_new_tokens=2")
  assert "--tokenizer_path=" in message and "--config." not in message, message
  check_fix(message, "sample")
  code, out, err = ctx.cli("sample", f"--init_from={hf}", "--max_new_tokens=2",
                           f"--tokenizer_path={GPT2_TIKTOKEN}")
  assert code == 0, err
  for command, flag in (("train", "--config.tokenizer_path="), ("prepare", "--tokenizer_path=")):
    other = (ctx.error(tokenizer.gpt2_encoding, "", flag[:-1]))
    assert flag in other, other
    check_fix(other, command)
  return message


@row("gptjax/data/tokenizer.py", "the `tokenizers` package is not installed", "prepare")
def _(ctx):
  from gptjax.data import tokenizer
  path = _tokenizer_json(ctx)
  ctx.monkeypatch.setitem(sys.modules, "tokenizers", None)
  return ctx.error(tokenizer.HfTokenizer, path)


@row("gptjax/data/tokenizer.py", "is not a Hugging Face tokenizer.json", "prepare")
def _(ctx):
  from gptjax.data import tokenizer
  return ctx.error(tokenizer.HfTokenizer, ctx.file("tokenizer.json", "{}"))


# --- tools/ ----------------------------------------------------------------------------------------


@row("tools/bench_nanogpt.py", "does not exist. Fix: pass a UTF-8 text file", None)
def _(ctx):
  """The bench's missing --input_file: its fix, leaving the flag out, is gptjax's default corpus
  (the flag's default; test_tools runs the bench on it)."""
  import subprocess
  bench = [sys.executable, os.path.join(TOOLS_DIR, "bench_nanogpt.py")]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  result = subprocess.run([*bench, f"--input_file={ctx.tmp / 'nope.txt'}"],
                          capture_output=True,
                          text=True,
                          env=env,
                          timeout=120)
  assert result.returncode == 2 and result.stderr.startswith("error: "), result.stderr[-2000:]
  helped = subprocess.run([*bench, "--help"], capture_output=True, text=True, env=env, timeout=120)
  assert "'' is gptjax's embedded default corpus" in helped.stdout.replace("\n      ", " ")
  return result.stderr[len("error: "):]


# --- The tests ---------------------------------------------------------------------------------------


def _matches(site, r: Row) -> bool:
  """Whether the row names the site (spaces aside: the formatter may wrap a statement anew)."""
  return site[0] == r.file and re.sub(r"\s+", "", r.fragment) in re.sub(r"\s+", "", site[2])


def test_every_fix_has_a_row():
  sites = fix_sites()
  assert len(sites) > 100, len(sites)
  missing = [
      f"{file}:{line}: {text[:100]}" for file, line, text in sites
      if not any(_matches((file, line, text), r) for r in ROWS)
  ]
  assert not missing, "places that write a Fix: without a row:\n" + "\n".join(missing)
  unmatched = [str(r) for r in ROWS if not any(_matches(site, r) for site in sites)]
  assert not unmatched, f"rows whose place is gone: {unmatched}"
  for r in ROWS:  # a fragment names one place
    assert sum(_matches(site, r) for site in sites) == 1, str(r)


@pytest.mark.parametrize("fix_row", ROWS, ids=str)
def test_the_fix_works(fix_row, ctx, request):
  import inspect
  wanted = [
      name for name, parameter in inspect.signature(fix_row.trigger).parameters.items()
      if parameter.default is inspect.Parameter.empty
  ][1:]  # the fixtures it asks for by name, after ctx
  message = fix_row.trigger(ctx, **{name: request.getfixturevalue(name) for name in wanted})
  check_fix(message, fix_row.command)
