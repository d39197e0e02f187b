"""The command lines as a user meets them: --help, nanoGPT's flag habits, the console scripts."""

from __future__ import annotations

import configparser
import importlib
import json
import os

import pytest

from conftest import REPO_ROOT, assert_user_error, run_command, run_module

from gptjax import config as config_lib
from gptjax import presets

CONFIG_COMMANDS = ["gptjax.train", "gptjax.plan", "gptjax.show_configs", "gptjax.calculate_params"]


def assert_one_line_error(result, message):
  """Exit 2, exactly `error: <message>` on stderr: no traceback, no absl FATAL, no usage dump."""
  assert_user_error(result, message)
  assert result.stderr.strip() == f"error: {message}", result.stderr
  assert "FATAL" not in result.stderr


@pytest.mark.parametrize("command", CONFIG_COMMANDS)
def test_help_lists_every_config_field_with_its_default_and_comment(command):
  result = run_command(command, "--help")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "--config.max_iters=5000\n      Number of optimizer updates to run." in result.stdout
  assert '--config.input_file=""\n      UTF-8 text to train on;' in result.stdout
  base = config_lib.get_base_config()
  for field in config_lib.field_comments():
    assert f"  --config.{field}=" in result.stdout, field
  assert "--config.mesh.fsdp=-1" in result.stdout and base.mesh.fsdp == -1


def test_help_with_a_preset_shows_its_values_beside_the_defaults():
  result = run_command("gptjax.train", "--config=tiny_char", "--help")
  assert result.returncode == 0, result.stderr[-3000:]
  tiny = presets.load(os.path.join(REPO_ROOT, "configs", "tiny_char.py"))
  assert f"--config.n_layer=6  (tiny_char: {tiny.n_layer})" in result.stdout


@pytest.mark.parametrize("module, flag", [("gptjax.sample", "--max_new_tokens"),
                                          ("gptjax.convert", "--from_hf")])
def test_help_of_the_other_commands_lists_their_flags(module, flag):
  result = run_command(module, "--help")
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"  {flag}: " in result.stdout and "--config." not in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--config_file", "configs/150M.json"], "--config_file is not a flag of gptjax: use "
     "--config=configs/150M.py (configs/150M.json does not exist)"),
    (["--config_file=configs/150M.py"
     ], "--config_file is not a flag of gptjax: use --config=configs/150M.py"),
    (["--config=tiny_char", "--max_iters", "5000"
     ], "--max_iters is not a flag of gptjax: use --config.max_iters=5000"),
    (["--config=tiny_char", "--max_iters=5000"
     ], "--max_iters is not a flag of gptjax: use --config.max_iters=5000"),
    (["--config=tiny_char", "--learning_rate=1e-4"
     ], "--learning_rate is not a flag of gptjax: use --config.learning_rate=1e-4"),
    (["--config=tiny_char", "--mesh.fsdp=2"
     ], "--mesh.fsdp is not a flag of gptjax: use --config.mesh.fsdp=2"),
    (["--config=tiny_char", "--nobias"
     ], "--nobias is not a flag of gptjax: use --config.bias=False"),
    (["configs/tiny_char.py"],
     "'configs/tiny_char.py' is not an argument of this command: use --config=configs/tiny_char.py"
    ),
    (["--config.max_iters=3"], "--config.max_iters needs a preset to override: add "
     "--config=<preset>, e.g. --config=tiny_char."),
])
def test_nanogpt_habits_get_a_one_line_hint(args, message):
  assert_one_line_error(run_command("gptjax.train", *args), message)


def test_an_unknown_flag_is_one_line_with_the_flag_it_resembles():
  result = run_command("gptjax.plan", "--config=tiny_char", "--targt=local")
  assert_one_line_error(
      result, "unknown flag --targt. Did you mean --target? Fix: see --help "
      "for the flags and the --config.<field> names.")


def test_bench_takes_a_json_preset_like_train(tmp_path):
  preset = tmp_path / "my_bench.json"
  preset.write_text(
      json.dumps({
          "n_layer": 1,
          "n_head": 2,
          "n_embd": 32,
          "block_size": 16,
          "vocab_size": 256,
          "batch_size": 2,
          "dropout": 0.0
      }))
  result = run_module("tools/bench.py", f"--config={preset}", "--steps=1", "--nosampling")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "my_bench: " in result.stdout and "ms/step" in result.stdout


@pytest.mark.parametrize("args, fragments", [
    (["--config=configs/no_such_preset.json"], ["no_such_preset.json", "does not exist"]),
    (["--config=tiny_char", "--config.n_layr=2"], ["n_layr", "n_layer"]),
    (["--config=tiny_char", "--max_iters=5"], ["use --config.max_iters=5"]),
])
def test_bench_preset_mistakes_are_train_s_clear_errors(args, fragments):
  assert_user_error(run_module("tools/bench.py", *args), *fragments)


def test_sample_prompt_from_a_missing_file_is_one_clear_error(tmp_path):
  missing = tmp_path / "missing.txt"
  result = run_command("gptjax.sample", f"--run_dir={tmp_path}", f"--prompt=FILE:{missing}")
  assert_user_error(result, str(missing), "Fix:")
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def console_scripts() -> dict[str, str]:
  parser = configparser.ConfigParser()
  parser.read(os.path.join(REPO_ROOT, "setup.cfg"))
  lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
  return dict((part.strip() for part in line.split("=")) for line in lines)


def test_setup_declares_a_console_script_per_command():
  scripts = console_scripts()
  assert set(scripts) == {
      "gptjax-train", "gptjax-sample", "gptjax-eval", "gptjax-compare", "gptjax-convert",
      "gptjax-plan", "gptjax-prepare", "gptjax-show-configs", "gptjax-calculate-params",
      "gptjax-accelerator-check"
  }
  for name, target in scripts.items():
    module, function = target.split(":")
    assert module == "gptjax." + name.split("-", 1)[1].replace("-", "_")
    assert callable(getattr(importlib.import_module(module), function)), target


@pytest.mark.parametrize("name", ["gptjax-train", "gptjax-sample", "gptjax-convert", "gptjax-plan"])
def test_console_script_runs_its_command(tmp_path, name):
  """The wrapper pip writes for a console script, run as one: --help answers, a mistake is one
  clear error."""
  module, function = console_scripts()[name].split(":")
  script = tmp_path / name
  script.write_text(f"import re\nimport sys\nfrom {module} import {function}\n"
                    f"if __name__ == '__main__':\n"
                    f"    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
                    f"    sys.exit({function}())\n")
  result = run_module(str(script), "--help")
  assert result.returncode == 0, result.stderr[-3000:]
  assert importlib.import_module(module).__doc__.splitlines()[0] in result.stdout
  assert ("--config.max_iters=5000" in result.stdout) == (name in ("gptjax-train", "gptjax-plan"))
  mistake = run_module(str(script), "--no_such_flag=1")
  assert_one_line_error(
      mistake, "unknown flag --no_such_flag. Fix: see --help for the flags" +
      (" and the --config.<field> names." if "config" in result.stdout else "."))


def test_messages_name_the_real_problem_and_a_fix_that_exists(tmp_path, cli, monkeypatch):
  """The misleading messages of a first hour, each now naming the right thing."""
  monkeypatch.chdir(tmp_path)
  train = ("--config=tiny_char", "--config.n_layer=1", f"--config.out_dir={tmp_path / 'out'}")

  def error(command, *args):
    code, _, err = cli(command, *args)
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err, (code, err)
    return err

  # learning_rate=nan is learning_rate's problem, not min_lr's.
  err = error("train", *train, "--config.learning_rate=nan")
  assert "config field 'learning_rate': nan is not a finite number" in err and "min_lr" not in err
  # sample's ranges, all at once, each with its range and a value that works.
  err = error("sample", "--run_dir=x", "--top_p=1.5", "--temperature=-1", "--num_samples", "0")
  for fragment in ("--top_p=1.5 is outside its range: in (0, 1]", "--temperature=-1.0 is outside "
                   "its range: >= 0", "--num_samples=0 is outside its range: >= 1"):
    assert fragment in err, (fragment, err)
  # A data_dir that is a text file: train on it as input_file, or prepare it elsewhere.
  (tmp_path / "input.txt").write_text("some text\n" * 100)
  err = error("train", *train, "--config.data_dir=input.txt")
  assert "--config.input_file=input.txt" in err and "--out_dir=data/input" in err, err
  assert "--out_dir=input.txt" not in err
  # A 3-byte input: a block that fits, or more text; no "larger validation share".
  (tmp_path / "three.txt").write_text("abc")
  err = error("train", *train, "--config.input_file=three.txt")
  assert "--config.block_size=1" in err and "more text" in err and "validation" not in err, err
  # A nanoGPT-presets command: every habit at once, the preset that exists, the field misspelt.
  err = error("train", "--config_file", "configs/150M.json", "--model_name", "dante",
              "--max_iters=5000", "--device=cuda", "--config.n_layr=2")
  for fragment in ("5 things to change", "use --config=150M (the shipped preset",
                   "use --config.model_name=dante", "use --config.max_iters=5000",
                   "--device is nanoGPT's, not gptjax's: drop it",
                   "unknown field 'n_layr'. Did you mean 'n_layer'?"):
    assert fragment in err, (fragment, err)
  monkeypatch.chdir(REPO_ROOT)
  err = error("train", "--config=configs/150M.json")
  assert "Fix: --config=configs/150M.py, which exists" in err, err
