"""python -m gptjax.compare: arms x seeds, the table's statistics against an independent Welch
test, the like-for-like check, bad inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from jax.scipy.special import betainc

from gptjax.training import compare

from conftest import TEXT, assert_user_error, read_metrics, run_command


def write_preset(tmp_path) -> str:
  """A 2-layer byte-level preset (a .py file, as users write them) that trains in seconds."""
  (tmp_path / "input.txt").write_text(TEXT, encoding="utf-8")
  path = tmp_path / "tiny_ab.py"
  path.write_text(
      "from gptjax.config import get_base_config\n\n\n"
      "def get_config():\n"
      "  config = get_base_config()\n"
      "  config.update(dict(name='tiny-ab', n_layer=2, n_head=2, n_embd=32, block_size=16,\n"
      "                     vocab_size=256, tokenizer='bytes', batch_size=4, dropout=0.0,\n"
      "                     max_iters=8, warmup_iters=2, learning_rate=3e-3, min_lr=3e-4,\n"
      "                     eval_interval=4, eval_iters=2, log_interval=1,\n"
      f"                     input_file={str(tmp_path / 'input.txt')!r}))\n"
      "  return config\n")
  return str(path)


def welch_reference(a, b):
  """Welch's t-test written out: t, the Welch-Satterthwaite degrees of freedom, and the two-sided
  p-value from the regularized incomplete beta function."""
  a, b = np.asarray(a, float), np.asarray(b, float)
  va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
  t = (a.mean() - b.mean()) / math.sqrt(va + vb)
  df = (va + vb)**2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
  return float(betainc(df / 2, 0.5, df / (df + t * t)))


def test_compare_trains_every_arm_and_seed_and_reports_them(tmp_path):
  preset = write_preset(tmp_path)
  out = tmp_path / "ab"
  result = run_command("gptjax.compare", f"--out_dir={out}", "--seeds=1,2,3",
                       f"--arm=adamw={preset}",
                       f"--arm=muon={preset},optimizer=muon,lr_schedule=wsd")
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((out / "compare.json").read_text())
  finals = {
      arm: [
          read_metrics(str(out / "runs" / f"{arm}-seed{seed}"))[-1]["val_bpb"] for seed in (1, 2, 3)
      ] for arm in ("adamw", "muon")
  }
  rows = {row["arm"]: row for row in summary["arms"]}
  for arm, values in finals.items():
    np.testing.assert_allclose(rows[arm]["final_val_bpb_mean"], np.mean(values), rtol=1e-12)
    np.testing.assert_allclose(rows[arm]["final_val_bpb_sd"], np.std(values, ddof=1), rtol=1e-9)
  assert len(set(finals["adamw"])) == 3  # the seeds really differ
  np.testing.assert_allclose(summary["target_bpb"], np.mean(finals["adamw"]))
  np.testing.assert_allclose(rows["muon"]["p_vs_first"],
                             welch_reference(finals["muon"], finals["adamw"]),
                             rtol=1e-4)
  assert rows["adamw"]["p_vs_first"] is None
  # The first arm's mean is reached by its best seed at the latest at its last evaluation.
  assert rows["adamw"]["reached_target"] >= 1 and rows["adamw"]["tokens_to_target"] <= 8 * 4 * 16
  assert (out / "compare.png").is_file()
  table = result.stdout[result.stdout.index("target: val bpb"):]
  assert f"{rows['muon']['final_val_bpb_mean']:.4f} ± {rows['muon']['final_val_bpb_sd']:.4f}" in table
  assert f"{rows['muon']['p_vs_first']:.3g}" in table


def test_compare_refuses_unlike_arms(tmp_path):
  preset = write_preset(tmp_path)
  result = run_command("gptjax.compare", f"--out_dir={tmp_path / 'ab'}", f"--arm=a={preset}",
                       f"--arm=b={preset},max_iters=16,train_split=0.8")
  assert_user_error(result, "not like for like", "tokens trained on: a has 512, b has 1024",
                    "train_split: a has 0.9, b has 0.8", "--allow_unlike")
  assert not (tmp_path / "ab").exists()  # refused before anything trained
  # Differences that keep the comparison fair (the optimizer, the model) are what it is for.
  same = [compare.parse_arm(f"a={preset}", []), compare.parse_arm(f"b={preset},optimizer=muon", [])]
  assert compare.unlike(same) == []


@pytest.mark.parametrize("args, fragments", [
    (["--arm=a=x.py"], ["two or more --arm"]),
    (["--arm=a", "--arm=b=c"], ["'a'", "NAME=PRESET"]),
    (["--arm=a=PRESET", "--arm=a=PRESET", "--seeds=1,1"], ["--seeds", "distinct"]),
    (["--arm=a=PRESET", "--arm=b=PRESET,no_such_field=1"
     ], ["'no_such_field'", "not a config field"]),
    (["--arm=a=PRESET", "--arm=b=PRESET,optimizer=sgd"], ["--arm=b", "'optimizer'"]),
    (["--arm=a=PRESET", "--arm=a=PRESET"], ["repeat"]),
])
def test_bad_input_is_one_clear_error(tmp_path, args, fragments):
  preset = write_preset(tmp_path)
  args = [arg.replace("PRESET", preset) for arg in args]
  assert_user_error(run_command("gptjax.compare", f"--out_dir={tmp_path / 'ab'}", *args),
                    *fragments)
