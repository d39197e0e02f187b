"""A fair A/B of training settings: arms (a preset plus overrides) x seeds on the same data and
the same number of tokens, trained one after the other; then each arm's final val bits per byte
(mean and standard deviation over seeds), the tokens and training time it took to reach a target,
Welch's t-test of each arm against the first, and a plot of the curves (the library half of
`python -m gptjax.compare`).
"""

from __future__ import annotations

import ast
import dataclasses
import math
import os
from typing import Any

import ml_collections
import numpy as np

from gptjax import presets
from gptjax.config import resolve_tokenizer, validate
from gptjax.errors import ConfigError, UserError

# What makes two runs like for like: the same text, split and tokenizer, the same tokens trained
# on, and the same evaluations.
LIKE_FOR_LIKE = ("data_dir", "input_file", "train_split", "tokenizer", "tokens trained on",
                 "eval_interval", "eval_iters")


@dataclasses.dataclass
class Arm:
  name: str
  config: ml_collections.ConfigDict  # the arm's config, seed and run directory not yet set


def parse_value(text: str):
  """A --config.<field>-style value: a Python literal (1e-3, True, 'x'), else the text itself."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str], where: str) -> None:
  """Sets each "field=value" (dotted for nested fields: mesh.data=2) on `config`."""
  for override in overrides:
    field, sep, value = override.partition("=")
    if not sep or not field:
      raise UserError(f"{where}: {override!r} is not field=value. Fix: e.g. optimizer=muon.")
    *parents, leaf = field.strip().split(".")
    target = config
    try:
      for parent in parents:
        target = target[parent]
      if leaf not in target:
        raise KeyError(leaf)
      target[leaf] = parse_value(value.strip())
    except KeyError as e:
      raise ConfigError(f"{where}: {field!r} is not a config field. Fix: a field that "
                        f"`python -m gptjax.train --help` lists, e.g. optimizer=muon.") from e
    except TypeError as e:
      current = target[leaf]
      raise ConfigError(
          f"{where}: {field}={value.strip()!r} is not a {type(current).__name__}, the "
          f"field's type. Fix: e.g. {field}={current!r}.") from e


def parse_arm(text: str, common: list[str]) -> Arm:
  """NAME=PRESET[,field=value...] -> an Arm with the common overrides, then its own, validated."""
  name, sep, rest = text.partition("=")
  if not sep or not name or not rest or not name.replace("_", "").replace("-", "").isalnum():
    raise UserError(f"--arm={text!r} is not NAME=PRESET[,field=value...]. Fix: e.g. "
                    f"--arm=muon=recipes/shakespeare_char_cpu,optimizer=muon.")
  preset, *overrides = rest.split(",")
  config = presets.load(preset)
  apply_overrides(config, common, "--set")
  apply_overrides(config, overrides, f"--arm={name}")
  try:
    validate(config)
  except ConfigError as e:
    raise ConfigError(f"--arm={name}: {e}") from e
  return Arm(name, config)


def like_for_like(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The settings that must agree between arms (LIKE_FOR_LIKE)."""
  values = {field: config[field] for field in LIKE_FOR_LIKE if field in config}
  values["tokenizer"] = resolve_tokenizer(config)
  values["tokens trained on"] = (config.batch_size * config.grad_accum_steps * config.block_size *
                                 config.max_iters)
  return values


def unlike(arms: list[Arm]) -> list[str]:
  """'field: arm a has X, arm b has Y' for every like-for-like setting that differs from the
  first arm's."""
  first = like_for_like(arms[0].config)
  return [
      f"{field}: {arms[0].name} has {first[field]!r}, {arm.name} has {value!r}" for arm in arms[1:]
      for field, value in like_for_like(arm.config).items() if value != first[field]
  ]


def curve(records: list[dict[str, Any]], tokens_per_step: int) -> dict[str, list[float]]:
  """A run's evaluations: steps, tokens, val loss, val bpb, and seconds of training steps up to
  each (the records' step times: compilation and evaluations left out)."""
  previous, elapsed = 0, 0.0
  out = dict(step=[], tokens=[], val_loss=[], val_bpb=[], seconds=[])
  for record in records:
    if "step_time_ms" in record:
      elapsed += record["step_time_ms"] / 1000 * (record["step"] - previous)
      previous = record["step"]
    if record.get("val_bpb") is not None:
      out["step"].append(record["step"])
      out["tokens"].append(record["step"] * tokens_per_step)
      out["val_loss"].append(record["val_loss"])
      out["val_bpb"].append(record["val_bpb"])
      out["seconds"].append(elapsed)
  return out


def to_target(run: dict[str, list[float]], target_bpb: float) -> tuple[float, float]:
  """(tokens, seconds) at the first evaluation whose val bpb is <= target_bpb; nan if none."""
  for tokens, seconds, bpb in zip(run["tokens"], run["seconds"], run["val_bpb"]):
    if bpb <= target_bpb:
      return tokens, seconds
  return math.nan, math.nan


def welch_p_value(a: list[float], b: list[float]) -> float | None:
  """Two-sided p-value of Welch's t-test (unequal variances) that a and b have equal means;
  None with fewer than two values on a side."""
  if len(a) < 2 or len(b) < 2:
    return None
  from scipy import stats  # a dependency of jax: always installed with it
  return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def summarize(curves: dict[str, list[dict]], target_bpb: float | None) -> dict[str, Any]:
  """Per arm: final val bpb (mean, sd), tokens and seconds to the target (mean over the seeds
  that reach it, and how many do), and p against the first arm. The default target is the first
  arm's mean final val bpb."""
  finals = {arm: [run["val_bpb"][-1] for run in runs] for arm, runs in curves.items()}
  first = next(iter(curves))
  target = float(np.mean(finals[first])) if target_bpb is None else target_bpb
  rows = []
  for arm, runs in curves.items():
    reached = [to_target(run, target) for run in runs]
    hit = [r for r in reached if not math.isnan(r[0])]
    rows.append(
        dict(arm=arm,
             seeds=len(runs),
             final_val_bpb_mean=float(np.mean(finals[arm])),
             final_val_bpb_sd=float(np.std(finals[arm], ddof=1)) if len(runs) > 1 else None,
             final_val_loss_mean=float(np.mean([run["val_loss"][-1] for run in runs])),
             reached_target=len(hit),
             tokens_to_target=float(np.mean([r[0] for r in hit])) if hit else None,
             seconds_to_target=float(np.mean([r[1] for r in hit])) if hit else None,
             p_vs_first=None if arm == first else welch_p_value(finals[arm], finals[first])))
  return dict(target_bpb=target, arms=rows)


def format_table(summary: dict[str, Any]) -> str:
  """The summary as a table, one arm a row."""

  def cell(value, fmt):
    return "-" if value is None else format(value, fmt)

  head = ("arm", "seeds", "final val bpb", "val loss", "reached", "tokens to target",
          "train s to target", "p vs first")
  rows = [(r["arm"], str(r["seeds"]),
           f"{r['final_val_bpb_mean']:.4f} ± {cell(r['final_val_bpb_sd'], '.4f')}",
           f"{r['final_val_loss_mean']:.4f}", f"{r['reached_target']}/{r['seeds']}",
           cell(r["tokens_to_target"], ",.0f"), cell(r["seconds_to_target"],
                                                     ".1f"), cell(r["p_vs_first"], ".3g"))
          for r in summary["arms"]]
  widths = [max(len(row[i]) for row in rows + [head]) for i in range(len(head))]
  line = lambda row: "  ".join(
      c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
  return "\n".join([
      f"target: val bpb <= {summary['target_bpb']:.4f}",
      line(head), "  ".join("-" * w for w in widths), *map(line, rows)
  ])


def plot(curves: dict[str, list[dict]], target_bpb: float, path: str) -> None:
  """val bpb against tokens: each seed thin, each arm's mean over seeds thick."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(8, 4.5))
  for index, (arm, runs) in enumerate(curves.items()):
    color = f"C{index}"
    for run in runs:
      ax.plot(run["tokens"], run["val_bpb"], "-", color=color, alpha=0.3, linewidth=1)
    length = min(len(run["tokens"]) for run in runs)
    mean = np.mean([run["val_bpb"][:length] for run in runs], axis=0)
    ax.plot(runs[0]["tokens"][:length], mean, "o-", color=color, label=arm, markersize=3)
  ax.axhline(target_bpb, color="gray", linestyle=":", label="target")
  ax.set_xlabel("tokens trained on")
  ax.set_ylabel("val bits per byte")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def read_curve(run_dir: str, config: ml_collections.ConfigDict) -> dict[str, list[float]]:
  from gptjax.training.metrics import read_records
  tokens_per_step = config.batch_size * config.grad_accum_steps * config.block_size
  run = curve(read_records(os.path.join(run_dir, "metrics.jsonl")), tokens_per_step)
  if not run["val_bpb"]:
    raise UserError(f"run {run_dir!r} has no evaluation with bits per byte. Fix: delete it and "
                    f"run the comparison again.")
  return run


def run_config(arm: Arm, seed: int, out_dir: str) -> ml_collections.ConfigDict:
  """The arm's config for one seed, in <out_dir>/runs/<arm>-seed<seed>."""
  config = ml_collections.ConfigDict(arm.config.to_dict())
  config.seed = seed
  config.out_dir = os.path.join(out_dir, "runs")
  config.model_name = f"{arm.name}-seed{seed}"
  return config
