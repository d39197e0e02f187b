"""nanoGPT against gptjax on nanoGPT's CPU recipe, side by side on this machine: same text, seeds.

  curl -Lo input.txt https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt
  python tools/bench_nanogpt.py --input_file=input.txt --seeds=1337,1,2
  python tools/bench_nanogpt.py --seeds= --interleaved_rounds=20   # per-step ratio only

Without --input_file both engines train on gptjax's embedded default corpus (Python's standard
library, gptjax/data.py); nanoGPT's published figures are for tiny Shakespeare.

Each run is a fresh subprocess, one after the other (never two at once, so neither steals the
other's cores): nanoGPT's model and training loop in PyTorch (tools/nanogpt_reference.py, eager, as
its CPU command runs it: `--compile=False`; its checkpoint saved whenever val improves, as its
shakespeare_char config does), then `python -m gptjax.train` with
the recipe recipes/shakespeare_char_cpu, by default with an empty compilation cache (a first run;
--compilation_cache=warm: every later run). Prints wall time (process start to exit), the median
step time inside the loop, the final val loss twice: each engine's own 20-batch estimate, as
nanoGPT reports it (it varies by ~0.014 with the batches drawn), and the exact loss over the whole
val split (the same windows for both engines, measured after the run and outside its wall time);
their means over seeds and gptjax's speed-up; writes a plot of every run's val loss against the
step. Needs torch (the `[test]` extra).

With --interleaved_rounds, both engines' train steps also run in one process, alternating blocks of
40 steps (gptjax's through gptjax.benchmark.train_loop_steps): on a shared machine whose speed
drifts for minutes at a time (this project's CI VMs do, by up to 60%), that ratio is the fair
per-step comparison; the sequential runs give wall time.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = "recipes/shakespeare_char_cpu"
FLAGS = flags.FLAGS  # this tool's flags once parsed (main sets them)
# The recipe's fields that nanoGPT's train.py reads under the same names.
RECIPE_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "max_iters",
                 "lr_decay_iters", "learning_rate", "min_lr", "warmup_iters", "beta1", "beta2",
                 "weight_decay", "grad_clip", "eval_interval", "eval_iters", "dropout", "bias")
INTERLEAVED_STEPS = 40


def recipe(max_iters: int | None = None) -> dict:
  """The recipe's hyperparameters, which both engines train with (max_iters replaced if given)."""
  from gptjax import presets
  config = presets.load(RECIPE)
  values = {key: config[key] for key in RECIPE_FIELDS}
  return dict(values,
              gradient_accumulation_steps=config.grad_accum_steps,
              **({} if max_iters is None else dict(max_iters=max_iters)))


def define_flags(values) -> None:
  flags.DEFINE_string("input_file",
                      "", "UTF-8 text to train on; '' is gptjax's embedded default "
                      "corpus (its standard-library text).",
                      flag_values=values)
  flags.DEFINE_list("seeds", ["1337"],
                    "Seeds; every engine trains once per seed.",
                    flag_values=values)
  flags.DEFINE_integer("max_iters",
                       None,
                       "Iterations (default: the recipe's, 2000).",
                       flag_values=values)
  flags.DEFINE_list("engines", ["nanogpt", "gptjax"], "Which to run.", flag_values=values)
  flags.DEFINE_string("gptjax_args", "--config.cpu_devices=2 --config.mesh.data=-1 "
                      "--config.mesh.fsdp=1",
                      "Extra flags for python -m gptjax.train.",
                      flag_values=values)
  flags.DEFINE_string("plot",
                      "bench_nanogpt.png",
                      "Val loss curves of every run ('' = none).",
                      flag_values=values)
  flags.DEFINE_integer("interleaved_rounds",
                       0, "Also time both engines' train steps in one "
                       f"process, alternating blocks of {INTERLEAVED_STEPS} steps for this many "
                       "rounds (0 = off): the per-step ratio under the same load.",
                       flag_values=values)
  flags.DEFINE_enum("nanogpt_vocab",
                    "chars", ["chars", "bytes"], "nanoGPT's vocabulary: its "
                    "prepare.py's characters of the text (65 for tiny Shakespeare), or gptjax's "
                    "256 bytes (the same data and output layer as gptjax, so the engines differ "
                    "only in the engine).",
                    flag_values=values)
  flags.DEFINE_enum("compilation_cache",
                    "cold", ["cold", "warm"], "gptjax's compiled programs: "
                    "'cold', an empty cache per run (a first run), or 'warm', a cache filled by an "
                    "untimed 1-step run beforehand (every run after the first).",
                    flag_values=values)
  flags.DEFINE_string("nanogpt_worker",
                      "",
                      "Internal: run the PyTorch side, print JSON.",
                      flag_values=values)
  flags.DEFINE_bool("interleaved_worker",
                    False,
                    "Internal: run interleaved_steps, print JSON.",
                    flag_values=values)


def _text(input_file: str) -> str:
  from gptjax.data.dataset import read_corpus
  return read_corpus(input_file)[0]


def nanogpt_run(input_file: str, seed: int, max_iters: int, vocab: str = "chars") -> dict:
  """nanoGPT's train.py on the text: its evaluations, median ms/step and whole-split val loss."""
  import nanogpt_reference
  trainer = nanogpt_reference.Trainer(_text(input_file),
                                      nanogpt_reference.TrainSettings(**recipe(max_iters)), seed,
                                      vocab)
  with tempfile.TemporaryDirectory() as out_dir:
    result = nanogpt_reference.train(trainer, out_dir)
  full_val_start = time.perf_counter()
  full_val = trainer.whole_split_loss("val")
  return dict(evals=result["evals"],
              step_ms=1000 * statistics.median(result["step_seconds"]),
              full_val=full_val,
              full_val_s=time.perf_counter() - full_val_start)


def gptjax_config(input_file: str, gptjax_args: str, out_dir: str):
  """The recipe with --gptjax_args applied as `python -m gptjax.train` applies them, validated."""
  from ml_collections import config_flags
  from gptjax import presets
  from gptjax.config import validate
  argv = [sys.argv[0], f"--config={presets.__file__}:{RECIPE}", *gptjax_args.split()]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=flag_values, sys_argv=argv)
  flag_values(argv)
  config = flag_values.config
  config.input_file, config.out_dir = input_file, out_dir
  validate(config)
  return config


def interleaved_steps(input_file: str, rounds: int, gptjax_args: str,
                      vocab: str) -> list[tuple[float, float]]:
  """Both engines' train steps in one process, alternating blocks of INTERLEAVED_STEPS: per
  round, the median ms/step of nanoGPT and of gptjax. Each block sees the same machine as its
  neighbour, so the ratio holds when the machine's speed drifts."""
  import numpy as np
  import nanogpt_reference
  from gptjax import sharding
  from gptjax.training.loop import train_loop_steps
  with tempfile.TemporaryDirectory() as scratch:  # gptjax's token cache
    config = gptjax_config(input_file, gptjax_args, scratch)
    sharding.use_cpu_devices(config.cpu_devices)
    engines = (("nanogpt",
                nanogpt_reference.Trainer(_text(input_file),
                                          nanogpt_reference.TrainSettings(**recipe(10**9)), 0,
                                          vocab).step), ("gptjax", train_loop_steps(config)))
    medians, it = [], 0
    for _ in range(rounds + 1):  # round 0 warms up; not reported
      times = {}
      for name, step in engines:
        times[name] = []
        for _ in range(INTERLEAVED_STEPS):
          start = time.perf_counter()
          step(it)
          times[name].append(time.perf_counter() - start)
          it += 1
      medians.append(tuple(1000 * float(np.median(times[k][2:])) for k in ("nanogpt", "gptjax")))
  return medians[1:]


def _run(cmd: list[str],
         what: str,
         stdout=subprocess.PIPE,
         cwd: str | None = None,
         env: dict | None = None) -> str:
  """Runs a child to completion and returns its stdout; a failing child is one clear error (its
  own message, e.g. a bad --gptjax_args value, is printed above it), not a traceback."""
  from gptjax.errors import UserError
  proc = subprocess.run(cmd,
                        cwd=cwd,
                        env=env,
                        stdout=stdout,
                        stderr=None if stdout is subprocess.DEVNULL else subprocess.PIPE,
                        text=True)
  if proc.returncode:
    if proc.stderr:
      sys.stderr.write(proc.stderr[-3000:])
    raise UserError(f"{what} failed with exit code {proc.returncode}; its error is above. Fix "
                    f"that (e.g. the value passed with --gptjax_args) and run again.")
  return proc.stdout


def _worker_result(args: list[str], what: str) -> object:
  out = _run([sys.executable, os.path.abspath(__file__), *args], what)
  return json.loads(out.split("RESULT ", 1)[1])


def train_gptjax(seed: int, out_dir: str, cache_dir: str, max_iters: int) -> float:
  """`python -m gptjax.train` on the recipe in a subprocess, its compilation cache in `cache_dir`
  (not the user's); returns the wall time, process start to exit."""
  f = FLAGS
  cmd = [
      sys.executable, "-m", "gptjax.train", f"--config={RECIPE}",
      f"--config.input_file={os.path.abspath(f.input_file) if f.input_file else ''}",
      f"--config.seed={seed}", f"--config.max_iters={max_iters}", f"--config.out_dir={out_dir}",
      f"--config.model_name=seed{seed}", f"--config.compilation_cache_dir={cache_dir}",
      *f.gptjax_args.split()
  ]
  start = time.perf_counter()
  _run(cmd,
       f"python -m gptjax.train (seed {seed})",
       stdout=subprocess.DEVNULL,
       cwd=REPO,
       env={
           **os.environ, "JAX_COMPILATION_CACHE_DIR": ""
       })
  return time.perf_counter() - start


def run_gptjax(seed: int, max_iters: int, cache_dir: str) -> dict:
  """Trains; the run's evaluations, median ms/step, wall s and whole-split val loss."""
  from gptjax.checkpoint import load_run
  from gptjax.data import dataset
  from gptjax.training.evaluate import split_loss
  with tempfile.TemporaryDirectory() as out_dir:
    wall = train_gptjax(seed, out_dir, cache_dir, max_iters)
    run_dir = os.path.join(out_dir, f"seed{seed}")
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
      records = [json.loads(line) for line in f]
    model, params, config, _, _ = load_run(run_dir)
    full_val, _ = split_loss(model, params, dataset.open_tokens(config).val)
  return dict(evals=[dict(step=r["step"], val=r["val_loss"]) for r in records if "val_loss" in r],
              step_ms=statistics.median(r["step_time_ms"] for r in records if r["step"] > 1),
              wall=wall,
              full_val=full_val)


def run_nanogpt(seed: int, max_iters: int) -> dict:
  """nanoGPT in its own process; wall time from process start to exit, less the whole-split
  evaluation after training (gptjax's is made outside its process)."""
  f = FLAGS
  start = time.perf_counter()
  result = _worker_result([
      f"--input_file={f.input_file}", f"--nanogpt_worker={seed},{max_iters}",
      f"--nanogpt_vocab={f.nanogpt_vocab}"
  ], f"the nanoGPT run (seed {seed})")
  return dict(result, wall=time.perf_counter() - start - result["full_val_s"])


def summarize(rows: list[dict], engines: list[str]) -> None:
  """Per engine: runs, mean wall, ms/step and both val losses (± over seeds); the speed-up."""
  if not rows:
    return
  print(f"\n{'engine':>8} {'runs':>5} {'wall s':>8} {'ms/step':>8} {'val, 20 batches':>18} "
        f"{'val, whole split':>18}")
  means = {}
  for engine in engines:
    mine = [r for r in rows if r["engine"] == engine]
    means[engine] = {
        k: statistics.mean(r[k] for r in mine) for k in ("wall", "step_ms", "val", "full_val")
    }
    spread = {
        k: statistics.stdev(r[k] for r in mine) if len(mine) > 1 else 0.0
        for k in ("val", "full_val")
    }
    print(f"{engine:>8} {len(mine):>5} {means[engine]['wall']:>8.1f} "
          f"{means[engine]['step_ms']:>8.1f} {means[engine]['val']:>10.4f} ± {spread['val']:.4f} "
          f"{means[engine]['full_val']:>10.4f} ± {spread['full_val']:.4f}")
  if set(means) == {"nanogpt", "gptjax"}:
    nano, ours = means["nanogpt"], means["gptjax"]
    print(f"\ngptjax speed-up over nanoGPT: {nano['wall'] / ours['wall']:.2f}x wall, "
          f"{nano['step_ms'] / ours['step_ms']:.2f}x per step")


def plot(rows: list[dict], engines: list[str], path: str, input_file: str, max_iters: int) -> None:
  """Every run's val loss against the step, and the final losses by both measures."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (ax, end) = plt.subplots(1, 2, figsize=(9, 4), width_ratios=(3, 1))
  color = lambda engine: "C0" if engine == "gptjax" else "C1"  # noqa: E731
  for r in rows:
    ax.plot(*zip(*r["curve"]),
            marker="o",
            ms=3,
            color=color(r["engine"]),
            label=f"{r['engine']} seed {r['seed']}")
  later = [loss for r in rows for step, loss in r["curve"] if step > 0
          ] or [loss for r in rows for _, loss in r["curve"]]
  ax.set(xlabel="step",
         ylabel="val loss (20 batches)",
         ylim=(min(later) - 0.1, max(later) + 0.1),
         title=f"nanoGPT CPU recipe, {os.path.basename(input_file) or 'default corpus'}")
  ax.legend(fontsize=7)
  for x, key in enumerate(("val", "full_val")):
    for i, engine in enumerate(engines):
      values = [r[key] for r in rows if r["engine"] == engine]
      end.plot([x + 0.15 * (i - 0.5)] * len(values),
               values,
               "o",
               color=color(engine),
               label=engine if x == 0 else None)
  if "shakespeare" in os.path.basename(input_file).lower():
    end.axhline(1.88, color="gray", ls="--", lw=1, label="1.88 (nanoGPT README)")
  end.set(xticks=[0, 1],
          xticklabels=["20 batches", "whole split"],
          xlim=(-0.5, 1.5),
          title=f"final val loss, step {max_iters}")
  end.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12))
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  print(f"plot: {path}")


def main(values) -> None:
  global FLAGS
  FLAGS = values
  from gptjax.errors import DataError
  f = FLAGS
  max_iters = recipe()["max_iters"] if f.max_iters is None else f.max_iters
  if f.nanogpt_worker:  # the PyTorch side, in its own process
    seed, iters = (int(x) for x in f.nanogpt_worker.split(","))
    print("RESULT " + json.dumps(nanogpt_run(f.input_file, seed, iters, f.nanogpt_vocab)))
    return
  if f.interleaved_worker:  # both engines in one process of their own
    print("RESULT " + json.dumps(
        interleaved_steps(f.input_file, f.interleaved_rounds, f.gptjax_args, f.nanogpt_vocab)))
    return
  if f.input_file and not os.path.isfile(f.input_file):
    raise DataError(f"--input_file {f.input_file!r} does not exist. Fix: pass a UTF-8 text file, "
                    f"e.g. tiny Shakespeare (https://raw.githubusercontent.com/karpathy/char-rnn/"
                    f"master/data/tinyshakespeare/input.txt), or leave it out to "
                    f"train on gptjax's default corpus.")
  _text(f.input_file)  # an unreadable file: one clear error before any run
  import platform
  import jax
  import torch
  print(f"machine: {platform.machine()}, {os.cpu_count()} cores | torch {torch.__version__} "
        f"({torch.get_num_threads()} threads) | jax {jax.__version__} | recipe: " +
        ", ".join(f"{k}={v}" for k, v in recipe(max_iters).items()) +
        f" | text: {f.input_file or 'gptjax default corpus'} | nanoGPT vocabulary: "
        f"{f.nanogpt_vocab} | gptjax compilation cache: {f.compilation_cache}")
  rows = []
  with tempfile.TemporaryDirectory() as shared_cache:
    if f.compilation_cache == "warm" and "gptjax" in f.engines and f.seeds:
      with tempfile.TemporaryDirectory() as out_dir:  # untimed: fills the cache
        train_gptjax(0, out_dir, shared_cache, max_iters=1)
    for seed in (int(s) for s in f.seeds):
      for engine in f.engines:
        if engine == "nanogpt":
          result = run_nanogpt(seed, max_iters)
        else:
          with tempfile.TemporaryDirectory() as empty:
            result = run_gptjax(seed, max_iters,
                                shared_cache if f.compilation_cache == "warm" else empty)
        rows.append(
            dict(engine=engine,
                 seed=seed,
                 wall=result["wall"],
                 step_ms=result["step_ms"],
                 val=result["evals"][-1]["val"],
                 full_val=result["full_val"],
                 curve=[(e["step"], e["val"]) for e in result["evals"]]))
        print(
            f"{engine:>8} seed {seed:>5}: wall {result['wall']:6.1f} s | "
            f"{result['step_ms']:5.1f} ms/step in the loop | val loss {rows[-1]['val']:.4f} "
            f"(whole split {result['full_val']:.4f})",
            flush=True)
  summarize(rows, f.engines)
  if f.interleaved_rounds:
    medians = _worker_result([
        f"--input_file={f.input_file}", "--interleaved_worker",
        f"--interleaved_rounds={f.interleaved_rounds}", f"--nanogpt_vocab={f.nanogpt_vocab}",
        f"--gptjax_args={f.gptjax_args}"
    ], "the interleaved run")
    ratios = [nano / jax_ms for nano, jax_ms in medians]
    print(f"\ninterleaved in one process, {len(medians)} rounds of {INTERLEAVED_STEPS} steps each "
          f"(median ms/step):")
    for i, ((nano, jax_ms), ratio) in enumerate(zip(medians, ratios)):
      print(f"  round {i + 1:>2}: nanoGPT {nano:5.1f} | gptjax {jax_ms:5.1f} | {ratio:.2f}x")
    print(f"gptjax speed-up per step, interleaved: {statistics.median(ratios):.2f}x median of "
          f"rounds ({min(ratios):.2f}x-{max(ratios):.2f}x)")
  if f.plot and rows:
    plot(rows, f.engines, f.plot, f.input_file, max_iters)


if __name__ == "__main__":
  from gptjax import cli
  cli.run_command(main, define_flags, __doc__)
