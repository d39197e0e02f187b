"""`python -m gptjax.accelerator_check` end to end on the CPU (tiny models, about a minute): its
report.json against figures computed here independently (the first step's loss from the model
itself, the parameter count from gptjax.params), and the steps' independence."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_user_error, run_command, run_module

from gptjax import accelerator_check, accelerator_steps
from gptjax import config as config_lib
from gptjax import model_config
from gptjax import devices, presets
from gptjax.config import ModelConfig
from gptjax.model import GPT
from gptjax.params import count_params


@pytest.fixture(scope="module")
def check(tmp_path_factory):
  out = tmp_path_factory.mktemp("accelerator_check") / "report"
  result = run_module("-m", "gptjax.accelerator_check", f"--out_dir={out}", timeout=900)
  assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
  assert "5 of 5 steps ok" in result.stdout
  assert "[1/5] devices and versions: ok" in result.stderr  # progress, step by step
  assert "[5/5] plan --measure" in result.stderr
  return out, json.loads((out / "report.json").read_text()), (out / "report.md").read_text()


def test_it_reports_this_machine_and_its_versions(check):
  _, report, markdown = check
  found = report["steps"]["devices"]
  assert found["status"] == "ok" and report["platform"] == "cpu" and report["quick"]
  assert found["versions"]["jax"] == jax.__version__
  assert found["versions"]["flax"] == __import__("flax").__version__
  assert found["hardware"] == devices.accelerator_hardware()  # no GPU or TPU here
  assert found["accelerator_used"]["ok"] and found["deviceless_target"] is None
  assert f"| jax | {jax.__version__} |" in markdown


def test_the_first_measured_loss_is_the_model_s_cross_entropy_on_its_batch(check):
  _, report, _ = check
  loss = report["steps"]["loss"]
  config = presets.load(loss["preset"])
  config.update({**loss["quick_overrides"], **loss["overrides"], "attention": "xla"})
  model_config = ModelConfig.from_config(config)
  model = GPT(model_config)
  params = jax.jit(lambda: nn.meta.unbox(
      model.init(jax.random.key(config.seed), jnp.zeros(
          (1, config.block_size), jnp.int32))["params"]))()
  windows = np.random.default_rng(loss["batch_seed"]).integers(0,
                                                               config.vocab_size,
                                                               size=(config.grad_accum_steps,
                                                                     config.batch_size,
                                                                     config.block_size + 1),
                                                               dtype=np.int32)[0]
  forward = jax.jit(lambda p, x: model.apply({"params": p}, x, deterministic=True))
  logits = np.asarray(forward(params, windows[:, :-1]), np.float64)
  logits -= logits.max(-1, keepdims=True)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = -np.take_along_axis(log_probs, windows[:, 1:, None], -1).mean()
  xla = loss["runs"]["xla"]
  assert len(xla["losses"]) == loss["steps"] == 5
  assert abs(xla["losses"][0] - expected) < 1e-5, (xla["losses"][0], expected)
  assert xla["params_counted"] == count_params(model_config).total


def test_each_attention_path_is_measured_or_not_available_on_the_cpu(check):
  _, report, markdown = check
  paths = accelerator_steps.attention_paths()
  assert report["attention_paths"] == paths and "xla" in paths
  rows = {row["attention"]: row for row in report["steps"]["plan"]["rows"]}
  assert set(rows) == set(paths)
  config = accelerator_steps.preset_config(accelerator_steps.QUICK_PRESET, True)
  xla = rows["xla"]
  assert xla["measured"]["step_ms"] > 0 and xla["planned"]["step_ms"] > 0
  assert xla["planned"]["tokens_per_step"] == config.batch_size * config.block_size
  assert xla["measured_over_planned"] == pytest.approx(xla["measured"]["step_ms"] /
                                                       xla["planned"]["step_ms"])
  # The process's peak memory holds at least the step XLA compiled.
  assert xla["measured"]["peak_bytes_in_use"] >= xla["planned"]["total_bytes"]
  for path in set(paths) - {"xla"}:  # cuDNN, splash, flash: GPU or TPU kernels
    assert rows[path]["note"] == "not available on cpu"
    assert report["steps"]["loss"]["runs"][path]["note"] == "not available on cpu"
    assert f"| {path} | not available on cpu |" in markdown


def test_sampler_and_trace(check):
  out, report, markdown = check
  sampler = report["steps"]["sampler"]
  assert sampler["new_tokens"] == 32
  assert sampler["tokens_per_second"] == pytest.approx(32 / sampler["decode_s"])
  trace = report["steps"]["profile"]
  assert any(name.endswith(".xplane.pb") for name in trace["files"])
  assert sum((out / "trace" / name).stat().st_size for name in trace["files"]) == trace["bytes"] > 0
  for title in ("Devices and versions", "Is the accelerator used?", "measured against the plan",
                "Sampling", "Fused attention against XLA", "Profiler trace"):
    assert f"## {title}" in markdown or title in markdown


def test_a_failing_step_is_reported_and_the_next_still_runs(capsys):
  result, saved = {"steps": {}}, []
  runner = accelerator_check.StepRunner(result,
                                        lambda: saved.append(len(result["steps"])),
                                        deadline=float("inf"))

  def broken():
    raise RuntimeError("out of memory")

  runner.run("loss", "losses", broken)
  runner.run("sampler", "tokens/s", lambda: {"tokens_per_second": 5.0})
  assert result["steps"]["loss"]["status"] == "failed"
  assert "out of memory" in result["steps"]["loss"]["error"]
  assert result["steps"]["sampler"]["status"] == "ok"
  assert saved == [1, 2]  # the report is written after every step
  assert "losses: failed" in capsys.readouterr().err
  late = accelerator_check.StepRunner(result, lambda: None, deadline=0.0)
  assert late.run("profile", "trace", lambda: {})["status"] == "skipped"


def test_the_attention_paths_are_what_the_config_accepts(monkeypatch):
  accepted = ("auto", "xla", "splash")
  monkeypatch.setattr(config_lib, "ATTENTION_IMPLEMENTATIONS", accepted)
  monkeypatch.setattr(model_config, "ATTENTION_IMPLEMENTATIONS",
                      accepted)  # where validation reads it
  assert accelerator_steps.attention_paths() == ["xla", "splash"]
  assert not accelerator_steps.available_on("splash", "cpu")
  assert accelerator_steps.available_on("splash", "tpu")


def test_an_out_dir_that_is_a_file_is_one_clear_error(tmp_path):
  taken = tmp_path / "report"
  taken.write_text("keep me")
  assert_user_error(run_command("gptjax.accelerator_check", f"--out_dir={taken}"), "--out_dir",
                    "Fix:")
  assert taken.read_text() == "keep me"
