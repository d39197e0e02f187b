"""python -m gptjax.show_configs and python -m gptjax.calculate_params, and the developer tools in
tools/, run as a user would: subprocesses from the repo."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from conftest import CONFIGS_DIR, REPO_ROOT, preset_files

from gptjax import config as config_lib
from gptjax import params as params_lib
from gptjax import presets

SHOW_CONFIGS = ("-m", "gptjax.show_configs")
CALCULATE_PARAMS = ("-m", "gptjax.calculate_params")
PRESET_FILES = preset_files()


def preset_name(file_name: str) -> str:
  return os.path.splitext(file_name)[0]


def run_tool(tool, *args, stdin=None, timeout=120):
  """Runs a script of tools/ (or `python -c`), or a command given as ("-m", module)."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  command = [tool] if isinstance(tool, str) else list(tool)
  return subprocess.run([sys.executable, *command, *args],
                        cwd=REPO_ROOT,
                        input=stdin,
                        env=env,
                        capture_output=True,
                        text=True,
                        timeout=timeout)


def expected_total(**architecture):
  model_config = config_lib.ModelConfig(**{
      "vocab_size": config_lib.GPT2_PADDED_VOCAB_SIZE,
      **architecture
  })
  return params_lib.count_params(model_config).total


def preset_total(file_name):
  config = presets.load(os.path.join(CONFIGS_DIR, file_name))
  return params_lib.count_params(config_lib.ModelConfig.from_config(config)).total


def assert_user_error(result):
  assert result.returncode == 2, (result.stdout, result.stderr)
  assert result.stderr.startswith("error:"), result.stderr
  assert "Traceback" not in result.stderr + result.stdout


def test_show_configs_lists_every_preset_with_exact_counts():
  result = run_tool(SHOW_CONFIGS)
  assert result.returncode == 0, result.stderr
  assert "Available Model Configurations" in result.stdout
  lines = result.stdout.splitlines()
  for file_name in PRESET_FILES:
    name = presets.load(os.path.join(CONFIGS_DIR, file_name)).name
    [line] = [line for line in lines if line.startswith(preset_name(file_name) + " ")]
    assert line.split()[1] == name
    assert f"{preset_total(file_name):,}" in line.split()
  assert len(PRESET_FILES) == 18  # the 12 original sizes, 400M_1024, 1B_1024 and the GPT-2 family


def test_show_configs_details_of_150m():
  result = run_tool(SHOW_CONFIGS, "--config=150M")
  assert result.returncode == 0, result.stderr
  assert "Config: GPT-150M" in result.stdout
  assert "152,101,632 (152.10M)" in result.stdout
  assert "--config=150M --config.model_name=my_model" in result.stdout


def test_show_configs_says_which_parameters_muon_takes():
  result = run_tool(SHOW_CONFIGS, "--config=recipes/shakespeare_char_cpu",
                    "--config.optimizer=muon")
  assert result.returncode == 0, result.stderr
  rows = [line.split() for line in result.stdout.splitlines() if line.startswith("  [")]
  config = presets.load(os.path.join(CONFIGS_DIR, "recipes", "shakespeare_char_cpu.py"))
  leaves = jax.tree_util.tree_leaves_with_path(
      nn.meta.unbox(params_lib.abstract_params(config_lib.ModelConfig.from_config(config))))
  # every parameter, in order
  assert [row[0] for row in rows] == [jax.tree_util.keystr(path) for path, _ in leaves]
  for row in rows:
    hidden_kernel = row[0].startswith("['h_") and row[0].endswith("['kernel']")
    assert ("muon" if hidden_kernel else "adamw") in row, row
  assert "Muon on the hidden matrices" in result.stdout


def test_show_configs_json_preset(tmp_path):
  path = tmp_path / "my_custom.json"
  path.write_text(
      json.dumps({
          "name": "GPT-Custom",
          "description": "My custom configuration",
          "batch_size": 32,
          "block_size": 512,
          "vocab_size": 50304,
          "n_embd": 512,
          "n_head": 8,
          "n_layer": 8,
          "dropout": 0.2,
          "bias": False
      }))
  result = run_tool(SHOW_CONFIGS, f"--config={path}")
  assert result.returncode == 0, result.stderr
  total = expected_total(n_layer=8, n_head=8, n_embd=512, block_size=512)
  assert f"Total           : {total:,}" in result.stdout


def test_calculate_params_explicit_sizes():
  result = run_tool(CALCULATE_PARAMS, "--config.n_layer=16", "--config.n_embd=768",
                    "--config.n_head=12", "--config.block_size=1024")
  assert result.returncode == 0, result.stderr
  total = expected_total(n_layer=16, n_head=12, n_embd=768, block_size=1024)
  assert f"Total           : {total:,}" in result.stdout
  assert f"Pytree count    : {total:,} (matches)" in result.stdout
  assert "position embedding (wpe)" in result.stdout and f"{1024 * 768:,}" in result.stdout
  assert "MLP (16 x 4,718,592)" in result.stdout


def test_calculate_params_config_file_with_bias_override():
  result = run_tool(CALCULATE_PARAMS, "--config=tiny_char", "--config.bias=True")
  assert result.returncode == 0, result.stderr
  total = expected_total(n_layer=4, n_head=4, n_embd=192, block_size=128, vocab_size=256, bias=True)
  assert f"Pytree count    : {total:,} (matches)" in result.stdout


def test_calculate_params_interactive():
  result = run_tool(CALCULATE_PARAMS, "--interactive", stdin="16\n768\n12\n1024\n\n\n")
  assert result.returncode == 0, result.stderr
  total = expected_total(n_layer=16, n_head=12, n_embd=768, block_size=1024)
  assert f"Total           : {total:,}" in result.stdout


def test_calculate_params_interactive_reprompts_after_bad_answers():
  """Each bad answer asks that same question again: n_head=3 does not divide n_embd=100, so n_head
  is asked again (not n_embd); "abc" is not a block_size."""
  answers = "2\n100\n3\n4\nabc\n64\n300\ny\n"
  result = run_tool(CALCULATE_PARAMS, "--interactive", stdin=answers)
  assert result.returncode == 0, result.stderr
  assert result.stdout.count("Embedding dimension (n_embd)") == 1
  assert result.stdout.count("Number of attention heads (n_head)") == 2
  assert result.stdout.count("Context length (block_size)") == 2
  assert "invalid n_head" in result.stdout and "[1, 2, 4, 5, 10, 20, 25, 50, 100]" in result.stdout
  assert "invalid n_embd" not in result.stdout and "invalid block_size" in result.stdout
  total = expected_total(n_layer=2, n_head=4, n_embd=100, block_size=64, vocab_size=300, bias=True)
  assert f"Total           : {total:,}" in result.stdout


def test_calculate_params_interactive_input_ends_early():
  assert_user_error(run_tool(CALCULATE_PARAMS, "--interactive", stdin="16\n12\n"))


def test_calculate_params_show_formula():
  result = run_tool(CALCULATE_PARAMS, "--show_formula")
  assert result.returncode == 0, result.stderr
  assert "L*(12*C^2 + (2 + 11*b)*C)" in result.stdout
  assert "12*L*C^2 + 2*V*C" in result.stdout
  assert "6*N + 12*L*T*C" in result.stdout


@pytest.mark.parametrize("args, in_message", [
    (("--config.n_layer=4", "--config.n_embd=100", "--config.n_head=3", "--config.block_size=64"),
     "n_head"),
    (("--config.n_layer=-1", "--config.n_embd=768", "--config.n_head=12", "--config.block_size=64"),
     "n_layer"),
    (("--config.n_layer=4", "--config.n_embd=768"), "--config.n_head, --config.block_size"),
    (("--config=configs/no_such_preset.py",), "does not exist"),
])
def test_calculate_params_user_errors(args, in_message):
  result = run_tool(CALCULATE_PARAMS, *args)
  assert_user_error(result)
  assert in_message in result.stderr


def test_misspelt_json_key_is_a_user_error(tmp_path):
  path = tmp_path / "typo.json"
  path.write_text(json.dumps({"name": "GPT-Typo", "n_layers": 4}))
  for tool in (SHOW_CONFIGS, CALCULATE_PARAMS):
    result = run_tool(tool, f"--config={path}")
    assert_user_error(result)
    assert "Did you mean 'n_layer'?" in result.stderr


def test_show_configs_missing_file():
  assert_user_error(run_tool(SHOW_CONFIGS, "--config=configs/no_such_preset.json"))


def readme_block(name: str, document: str = "README.md") -> str:
  with open(os.path.join(REPO_ROOT, document), encoding="utf-8") as f:
    readme = f.read()
  return readme.split(f"<!-- {name}:begin -->\n")[1].split(f"<!-- {name}:end -->")[0].strip()


def test_readme_presets_table_is_what_show_configs_prints():
  result = run_tool(SHOW_CONFIGS, "--markdown")
  assert result.returncode == 0, result.stderr
  assert readme_block("presets") == result.stdout.strip()


def test_readme_memory_table_is_what_show_configs_prints():
  result = run_tool(SHOW_CONFIGS, "--memory", "--markdown")
  assert result.returncode == 0, result.stderr
  assert readme_block("memory", os.path.join("docs", "planner.md")) == result.stdout.strip()


def memory_table():
  with open(os.path.join(REPO_ROOT, "gptjax", "planner", "memory_table.json")) as f:
    return {row["preset"]: row for row in json.load(f)["rows"]}


def test_memory_table_covers_every_preset_and_its_marks_are_its_figures():
  """Every preset and common target has a cell; ✓ is a total within the device's memory, and
  every suggested change fits with 10% of it free."""
  from gptjax.planner import targets
  table = memory_table()
  assert sorted(table) == sorted(
      name for name in presets.catalogue() if not name.startswith("recipes/"))  # modern/* included
  for row in table.values():
    assert list(row["targets"]) == list(targets.COMMON_TARGETS)
    for name, cell in row["targets"].items():
      memory = targets.parse_target(name).device_memory_bytes
      assert cell["fits"] == (cell["total"] is not None and cell["total"] <= memory)
      if cell["fix"]:
        assert cell["fix_total"] <= 0.9 * memory


@pytest.mark.compile_only
@pytest.mark.parametrize("preset, target", [("tiny_char", "tpu-v5e-1"), ("small", "gpu-a100-40gb")])
def test_memory_table_is_what_the_planner_compiles_today(preset, target):
  """The stored table is not stale: compiling two of its cells again gives the same bytes and the
  same est. MFU, the preset table's (when this fails, the step changed: python -m
  gptjax.show_configs --memory --refresh)."""
  from gptjax.planner import memory_table as table_lib
  from gptjax.planner import targets
  config = presets.load_validated(os.path.join(CONFIGS_DIR, f"{preset}.py"))
  cell = table_lib.memory_cell(config, targets.parse_target(target), compile=True)
  from gptjax.planner.memory_table import older_columns, read_memory_columns
  assert target not in (older_columns(read_memory_columns()) or {}).get("names", [])
  stored = memory_table()[preset]["targets"][target]
  assert cell["total"] == pytest.approx(stored["total"], rel=0.01)
  assert cell["mfu"] == pytest.approx(stored["mfu"], rel=0.02)
  assert cell["mfu_roofline"] == pytest.approx(stored["mfu_roofline"], rel=0.02)


def test_columns_compiled_before_the_others_say_so_under_the_table():
  """A column a partial refresh left from an older step is named, with when it was compiled and
  the command that recompiles it, wherever the table is printed (and the stale ones alone)."""
  from gptjax.planner.memory_table import older_columns, read_memory_columns
  columns = {
      "gpu-a100-40gb": "python -m gptjax.show_configs --memory --refresh, jax 0.10.2, 2026-12-03",
      "tpu-v5e-8": "python -m gptjax.show_configs --memory --refresh, jax 0.10.2, 2026-11-26",
      "tpu-v4-8": "python -m gptjax.show_configs --memory --refresh, jax 0.10.2, 2026-11-26"
  }
  assert older_columns(columns) == dict(names=["tpu-v5e-8", "tpu-v4-8"],
                                        about="jax 0.10.2 on 2026-11-26",
                                        newest="jax 0.10.2 on 2026-12-03")
  assert older_columns({**columns, "tpu-v5e-8": columns["gpu-a100-40gb"], "tpu-v4-8": None}) is None
  older = older_columns(read_memory_columns())
  result = run_tool(SHOW_CONFIGS, "--memory")
  assert result.returncode == 0, result.stderr
  note = [line for line in result.stdout.splitlines() if line.startswith("Compiled by")]
  if older is None:
    assert note == []
  else:
    assert len(note) == 1 and older["about"] in note[0], note
    assert f"--targets={','.join(older['names'])}`" in note[0]


def test_a_refresh_of_some_rows_rewrites_those_cells_and_keeps_the_rest(tmp_path, monkeypatch):
  """--refresh --presets=...: the named rows' cells of the refreshed columns are the new ones;
  every other row, cell and column provenance is the shipped table's; an unknown name is one
  error. (Analytic cells stand in for compiled ones: the merge is the same.)"""
  import shutil

  from gptjax.errors import ConfigError
  from gptjax.planner import memory_table as table_lib
  copy = str(tmp_path / "memory_table.json")
  shutil.copy(table_lib.memory_table_path(), copy)
  monkeypatch.setattr(table_lib, "memory_table_path", lambda: copy)
  before, columns = memory_table(), table_lib.read_memory_columns()
  rows = table_lib.memory_rows(target_names=["tpu-v5e-1"], preset_names=["tiny_char", "small"])
  assert [row["preset"] for row in rows] == ["tiny_char", "small"]
  fresh = {row["preset"]: dict(row["targets"]) for row in rows}
  table_lib.store_memory_table(rows, "a test, jax 0, 2999-01-01", every_row=False)
  after = {row["preset"]: row for row in table_lib.read_memory_table()}
  assert list(after) == list(before)
  assert table_lib.read_memory_columns() == columns
  for name, row in after.items():
    for target, cell in row["targets"].items():
      expected = fresh[name][target] if name in fresh and target == "tpu-v5e-1" else \
          before[name]["targets"][target]
      assert cell == expected, (name, target)
  assert fresh["small"]["tpu-v5e-1"] != before["small"]["targets"]["tpu-v5e-1"]  # analytic now
  with pytest.raises(ConfigError, match="recipes/shakespeare_char_cpu has no row"):
    table_lib.memory_rows(preset_names=["recipes/shakespeare_char_cpu"])


# The devices preset descriptions may name, as planner targets (gptjax.show_configs --memory).
CLAIMED_DEVICES = {
    "24 GB GPU": "gpu-rtx4090-24gb",
    "40 GB GPU": "gpu-a100-40gb",
    "80 GB GPU": "gpu-h100-80gb",
    "TPU v5e chip": "tpu-v5e-1",
    "TPU v5e-8": "tpu-v5e-8",
    "TPU v4-8": "tpu-v4-8"
}


@pytest.mark.parametrize("file_name", PRESET_FILES)
def test_preset_memory_claims_hold_on_the_devices_they_name(file_name):
  """A description that names a device (or a size in GB) is true: at its shipped settings the
  preset fits that device with 10% of its memory free, by the compiled memory table."""
  from gptjax.planner import targets
  description = presets.load(os.path.join(CONFIGS_DIR, file_name)).description
  claimed = [target for words, target in CLAIMED_DEVICES.items() if words in description]
  assert claimed or not re.search(r"\d+ ?GB|TPU", description), description  # no unchecked claim
  for name in claimed:
    total = memory_table()[preset_name(file_name)]["targets"][name]["total"]
    assert total <= 0.9 * targets.parse_target(name).device_memory_bytes, (name, total / 2**30)


BENCH_NANOGPT = os.path.join("tools", "bench_nanogpt.py")


@pytest.mark.slow
def test_bench_nanogpt_runs_both_engines_side_by_side(tmp_path):
  """Two iterations of each engine on a small text: one row each, finite losses, a plot."""
  text = tmp_path / "input.txt"
  text.write_text("".join(
      f"Line {i}: to be, or not to be, that is the question.\n" for i in range(300)),
                  encoding="utf-8")
  plot = tmp_path / "bench.png"
  result = run_tool(BENCH_NANOGPT,
                    f"--input_file={text}",
                    "--max_iters=2",
                    "--seeds=3",
                    "--gptjax_args=",
                    f"--plot={plot}",
                    "--compilation_cache=warm",
                    timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = {line.split()[0]: line for line in result.stdout.splitlines() if " seed " in line}
  assert set(rows) == {"nanogpt", "gptjax"}, result.stdout
  for line in rows.values():
    estimate, whole_split = re.search(r"val loss ([\d.]+) \(whole split ([\d.]+)\)", line).groups()
    assert 0 < float(estimate) < 10 and 0 < float(whole_split) < 10, line
  assert "speed-up over nanoGPT" in result.stdout and plot.stat().st_size > 0


@pytest.mark.slow
def test_bench_nanogpt_interleaves_both_engines_in_one_process(tmp_path):
  """--interleaved_rounds alone: per-round medians of both engines and their ratio."""
  text = tmp_path / "input.txt"
  text.write_text("".join(f"Line {i}: to be, or not to be.\n" for i in range(300)),
                  encoding="utf-8")
  result = run_tool(
      BENCH_NANOGPT,
      f"--input_file={text}",
      "--seeds=",
      "--interleaved_rounds=1",
      "--gptjax_args=--config.cpu_devices=2 --config.mesh.data=-1 --config.mesh.fsdp=1",
      "--plot=",
      timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  nano, jax_ms, ratio = re.search(r"round  1: nanoGPT +([\d.]+) \| gptjax +([\d.]+) \| ([\d.]+)x",
                                  result.stdout).groups()
  assert float(nano) > 0 and float(jax_ms) > 0
  assert abs(float(ratio) - float(nano) / float(jax_ms)) < 0.01 + 0.01 * float(ratio)
  assert "speed-up per step, interleaved" in result.stdout and " seed " not in result.stdout


def nanogpt_reference():
  pytest.importorskip("torch")
  sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
  import nanogpt_reference
  return nanogpt_reference


def test_nanogpt_reference_trains_exactly_as_upstream_nanogpt(tmp_path):
  """The port against karpathy/nanoGPT itself (commit 93a43d9), run on this text as `python
  train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=2
  --log_interval=1 --block_size=32 --batch_size=4 --n_layer=2 --n_head=2 --n_embd=32
  --max_iters=6 --lr_decay_iters=6 --dropout=0.0 --warmup_iters=2 --eval_interval=3`: the same
  evaluations and per-step losses (to the 4 decimals it prints), and its checkpoint."""
  from conftest import TEXT
  reference = nanogpt_reference()
  settings = reference.TrainSettings(n_layer=2,
                                     n_head=2,
                                     n_embd=32,
                                     block_size=32,
                                     batch_size=4,
                                     max_iters=6,
                                     lr_decay_iters=6,
                                     learning_rate=1e-3,
                                     min_lr=1e-4,
                                     warmup_iters=2,
                                     beta1=0.9,
                                     beta2=0.99,
                                     weight_decay=0.1,
                                     grad_clip=1.0,
                                     eval_interval=3,
                                     eval_iters=2)
  trainer = reference.Trainer(TEXT, settings, seed=1337)
  losses, reference_step = [], trainer.step
  trainer.step = lambda it: (reference_step(it), losses.append(trainer.last_loss))
  result = reference.train(trainer, str(tmp_path))
  upstream_evals = [(0, 3.5008, 3.4963), (3, 3.4273, 3.4340), (6, 3.3507, 3.3682)]
  assert [e["step"] for e in result["evals"]] == [step for step, _, _ in upstream_evals]
  np.testing.assert_allclose([(e["train"], e["val"]) for e in result["evals"]],
                             [(train, val) for _, train, val in upstream_evals],
                             atol=2e-4)
  np.testing.assert_allclose(losses, [3.5098, 3.4940, 3.4863, 3.4281, 3.3979, 3.3901, 3.3968],
                             atol=2e-4)
  assert len(result["step_seconds"]) == 7 and (tmp_path / "ckpt.pt").stat().st_size > 0


@pytest.mark.parametrize("vocab, size", [("chars", 28), ("bytes", 256)])
def test_nanogpt_reference_starts_at_chance_loss(vocab, size):
  """The PyTorch nanoGPT reference, untrained: loss near ln(vocab) (GPT-2 init, std 0.02: logits of
  std ~0.2, a little above chance), which a mis-wired embedding, head or cross-entropy would miss.
  28 characters in its own vocabulary, 256 in gptjax's bytes; the bench's recipe settings."""
  import math
  reference = nanogpt_reference()
  import bench_nanogpt
  trainer = reference.Trainer("abcdefghij klmnopqrstuvwxyz\n" * 400,
                              reference.TrainSettings(**bench_nanogpt.recipe(0)), 0, vocab)
  assert math.log(size) <= trainer.estimate_loss()["val"] <= math.log(size) + 0.15


def test_bench_nanogpt_imports_without_work_and_defaults_to_the_embedded_corpus():
  """Importing the tool defines no flags, loads no preset and no torch; its text defaults to
  gptjax's default corpus, which every clone has."""
  code = ("import sys; sys.path.insert(0, 'tools'); import bench_nanogpt; from absl import flags; "
          "assert 'input_file' not in flags.FLAGS and 'torch' not in sys.modules; "
          "assert 'gptjax.config' not in sys.modules; print('clean')")
  assert run_tool("-c", code).stdout.strip() == "clean"
  result = run_tool(BENCH_NANOGPT, "--help")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "--input_file: UTF-8 text to train on; '' is gptjax's embedded default corpus" in (
      result.stdout.replace("\n      ", " "))


def test_bench_nanogpt_missing_input_is_one_clear_error(tmp_path):
  missing = tmp_path / "nope.txt"
  result = run_tool(BENCH_NANOGPT, f"--input_file={missing}")
  assert_user_error(result)
  assert "nope.txt" in result.stderr and "Fix:" in result.stderr


def test_bench_nanogpt_bad_gptjax_args_is_one_clear_error(tmp_path):
  """A bad value in --gptjax_args: gptjax.train's own message, then one line from the bench."""
  text = tmp_path / "input.txt"
  text.write_text("to be, or not to be.\n" * 300, encoding="utf-8")
  result = run_tool(BENCH_NANOGPT, f"--input_file={text}", "--max_iters=1", "--seeds=3",
                    "--engines=gptjax", "--gptjax_args=--config.batch_size=0", "--plot=")
  assert_user_error(result)
  assert "batch_size" in result.stderr and "--gptjax_args" in result.stderr


def test_split_loss_predicts_every_token_once(tiny):
  """training.evaluate.split_loss against a brute force: each window alone, log-softmax in numpy."""
  import jax
  import numpy as np
  from gptjax.training.evaluate import split_loss
  from gptjax.config import ModelConfig
  from gptjax.model import GPT
  model = GPT(ModelConfig.from_config(tiny()))
  T = model.config.block_size
  params = model.init(jax.random.key(0), np.zeros((1, T), np.int32))["params"]
  tokens = np.random.default_rng(0).integers(0, 256, size=7 * T + 5).astype(np.uint16)
  loss, predicted = split_loss(model, params, tokens, batch_size=3)  # 3 + 3 + a partial batch of 1
  expected = []
  for start in range(0, len(tokens) - T, T):
    window = tokens[start:start + T + 1].astype(np.int32)
    logits = np.asarray(model.apply({"params": params}, window[None, :-1])[0], np.float64)
    peak = logits.max(-1, keepdims=True)
    log_probs = logits - peak - np.log(np.exp(logits - peak).sum(-1, keepdims=True))
    expected += [-log_probs[t, window[t + 1]] for t in range(T)]
  assert predicted == len(expected) == 7 * T
  np.testing.assert_allclose(loss, np.mean(expected), rtol=1e-5)
