"""What a run reports beyond metrics.jsonl: W&B (offline mode) logs the same records and a resumed
run continues the same W&B run; a jax.profiler trace of chosen steps changes no loss."""

from __future__ import annotations

import glob
import os

import pytest

from conftest import read_metrics, run_module
from wandb_records import offline_runs

TRAIN = ("-m", "gptjax.train", "--config=tiny_char", "--config.n_layer=1", "--config.eval_iters=1",
         "--config.log_interval=1", "--config.eval_interval=2", "--config.dropout=0.1",
         "--config.compilation_cache_dir=", "--config.wandb_project=gptjax-test",
         "--config.wandb_tags=test,tiny")


@pytest.mark.slow
def test_wandb_offline_records_equal_metrics_and_a_resume_continues_the_run(tmp_path):
  env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb"), "WANDB_API_KEY": ""}
  (tmp_path / "wandb").mkdir()
  for max_iters in (3, 5):  # the second run resumes from the step-2 checkpoint, then goes on
    result = run_module(*TRAIN,
                        f"--config.max_iters={max_iters}",
                        f"--config.out_dir={tmp_path}",
                        env=env)
    assert result.returncode == 0, result.stderr[-3000:]
  run_id = (tmp_path / "tiny_char" / "wandb_id").read_text().strip()
  runs = offline_runs(str(tmp_path / "wandb"))
  assert [run["id"] for run in runs] == [run_id, run_id]
  logged = {}  # by step, the later value winning, as W&B merges a resumed run's rows
  for run in runs:
    for row in run["history"]:
      logged.setdefault(row["_step"], {}).update(row)
  records = read_metrics(tmp_path / "tiny_char")
  assert sorted(logged) == [r["step"] for r in records] == [1, 2, 3, 4, 5]
  for record in records:
    row = logged[record["step"]]
    for key, value in record.items():
      if key != "step" and value is not None:
        assert row[key] == value, (record["step"], key)


def test_without_wandb_a_run_trains_after_one_line(tmp_path):
  """No network and no API key in online mode: W&B fails to start, the run does not."""
  env = {
      "WANDB_MODE": "online",
      "WANDB_API_KEY": "",
      "WANDB_DIR": str(tmp_path),
      "HOME": str(tmp_path)
  }  # no ~/.netrc with a key of this machine's
  result = run_module(*TRAIN, "--config.max_iters=1", f"--config.out_dir={tmp_path}", env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  [line] = [line for line in result.stderr.splitlines() if "W&B" in line]
  assert line.startswith("note: W&B did not start") and "training goes on" in line


def test_a_profile_trace_is_written_and_changes_no_loss(tiny):
  from gptjax.training.loop import train
  traced = tiny(model_name="traced", max_iters=5, dropout=0.1, profile_steps="2:3")
  train(traced)
  train(tiny(model_name="plain", max_iters=5, dropout=0.1))
  run_dir = os.path.join(traced.out_dir, "traced")
  assert glob.glob(os.path.join(run_dir, "profile", "plugins", "profile", "*", "*.xplane.pb"))
  assert glob.glob(
      os.path.join(run_dir, "profile", "plugins", "profile", "*", "perfetto_trace.json.gz"))
  plain = read_metrics(os.path.join(traced.out_dir, "plain"))
  assert [r["train_loss"] for r in read_metrics(run_dir)] == [r["train_loss"] for r in plain]
