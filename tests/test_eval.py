"""python -m gptjax.eval: a run (or GPT-2's weights) on a whole validation split, with bits per
byte; its bad inputs."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from gptjax.checkpoint import load_run
from gptjax.data import dataset
from gptjax.training.evaluate import split_loss
from gptjax.training.loop import train

from conftest import TEXT, assert_user_error, run_command


def evaluate(*args):
  result = run_command("gptjax.eval", *args, "--json")
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny byte-level run with checkpoints at steps 4 and 8."""
  from conftest import tiny_config
  tmp_path = tmp_path_factory.mktemp("eval")
  config = tiny_config(tmp_path, max_iters=8, eval_interval=4, keep_checkpoints=5)
  train(config)
  return config, os.path.join(config.out_dir, config.model_name)


def test_eval_reports_the_whole_val_splits_loss_and_bits_per_byte(trained):
  config, run_dir = trained
  result = evaluate(f"--run_dir={run_dir}")
  val = np.asarray(dataset.open_tokens(config).val)
  T = config.block_size
  predicted = (len(val) - 1) // T * T  # every token after the first, in whole windows
  assert result["tokens"] == predicted
  # Independently: the targets decoded to text, its UTF-8 bytes, and the loss in bits over them.
  targets = val[1:1 + predicted]
  text = bytes(int(t) for t in targets if t != 255).decode("utf-8")
  assert result["bytes"] == len(text.encode("utf-8"))
  model, params, *_ = load_run(run_dir)
  loss, count = split_loss(model, params, val)
  assert count == predicted
  np.testing.assert_allclose(result["loss"], loss, rtol=1e-6)
  np.testing.assert_allclose(result["bpb"],
                             loss * predicted / math.log(2) / len(text.encode("utf-8")),
                             rtol=1e-6)
  # The same text named with --input_file gives the same tokens, hence the same figures.
  again = evaluate(f"--run_dir={run_dir}", f"--input_file={config.input_file}")
  assert (again["tokens"], again["bytes"]) == (result["tokens"], result["bytes"])
  np.testing.assert_allclose(again["loss"], result["loss"], rtol=1e-6)


def test_eval_picks_the_checkpoint_asked_for(trained):
  _, run_dir = trained
  latest = evaluate(f"--run_dir={run_dir}")
  at_8 = evaluate(f"--run_dir={run_dir}", "--checkpoint=8")
  at_4 = evaluate(f"--run_dir={run_dir}", "--checkpoint=4")
  best = evaluate(f"--run_dir={run_dir}", "--checkpoint=best")
  assert at_8["loss"] == latest["loss"] and at_4["loss"] != at_8["loss"]
  assert best["loss"] in (at_4["loss"], at_8["loss"])
  printed = run_command("gptjax.eval", f"--run_dir={run_dir}")
  assert printed.returncode == 0, printed.stderr
  assert f"val loss {latest['loss']:.4f} | val bpb {latest['bpb']:.4f}" in printed.stdout


def test_eval_on_another_corpus(trained, tmp_path):
  _, run_dir = trained
  other = tmp_path / "other.txt"
  other.write_text(TEXT[::-1] * 2, encoding="utf-8")
  result = evaluate(f"--run_dir={run_dir}", f"--input_file={other}")
  assert result["source"] == f"--input_file {other}"
  assert result["tokens"] > 0 and result["bpb"] > 0


@pytest.mark.parametrize("args, fragments", [
    ([], ["--run_dir", "--init_from"]),
    (["--run_dir=r", "--init_from=gpt2"], ["--run_dir", "--init_from"]),
    (["--run_dir=r", "--data_dir=d", "--input_file=f"], ["--data_dir", "--input_file"]),
    (["--init_from=gpt2"], ["--input_file"]),
    (["--run_dir=r", "--checkpoint=newest"], ["'newest'", "--checkpoint=best"]),
    (["--run_dir=r", "--batch_size=0"], ["--batch_size=0"]),
])
def test_bad_flags_are_one_clear_error(args, fragments):
  assert_user_error(run_command("gptjax.eval", *args), *fragments)


def test_bad_run_step_and_file_are_one_clear_error(trained, tmp_path):
  _, run_dir = trained
  assert_user_error(run_command("gptjax.eval", f"--run_dir={tmp_path / 'nothing'}"), "nothing",
                    "Fix:")
  assert_user_error(run_command("gptjax.eval", f"--run_dir={run_dir}", "--checkpoint=5"), "step 5",
                    "4, 8")
  assert_user_error(
      run_command("gptjax.eval", f"--run_dir={run_dir}", f"--input_file={tmp_path / 'no.txt'}"),
      "no.txt")


def test_training_with_eval_iters_0_records_the_whole_val_splits_exact_loss(tmp_path):
  """eval_iters=0: every evaluation is the whole validation split, every token once: the recorded
  val loss and bits per byte equal a brute-force cross-entropy over every window of the split,
  one window at a time, with the checkpoint of that step."""
  from conftest import read_metrics, tiny_config
  config = tiny_config(tmp_path, max_iters=8, eval_interval=4, eval_iters=0, keep_checkpoints=5)
  train(config)
  run_dir = os.path.join(config.out_dir, config.model_name)
  records = {r["step"]: r for r in read_metrics(run_dir) if "val_loss" in r}
  assert set(records) == {4, 8} and all("eval_train_loss" not in r for r in records.values())
  val = np.asarray(dataset.open_tokens(config).val)
  T = config.block_size
  windows = [val[i * T:i * T + T + 1] for i in range((len(val) - 1) // T)]
  model, params, *_ = load_run(run_dir)  # the latest: step 8
  nats = []
  for window in windows:
    logits = np.asarray(model.apply({"params": params}, window[None, :-1]), np.float64)[0]
    logits -= logits.max(axis=-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    nats.extend(-log_probs[np.arange(T), window[1:]])
  text_bytes = len(bytes(int(t) for t in val[1:1 + len(nats)] if t != 255))
  np.testing.assert_allclose(records[8]["val_loss"], np.mean(nats), rtol=2e-6)
  np.testing.assert_allclose(records[8]["val_bpb"],
                             np.sum(nats) / math.log(2) / text_bytes,
                             rtol=2e-6)
