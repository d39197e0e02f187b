"""nanoGPT against gptjax on nanoGPT's CPU recipe, side by side on this machine, same text, same seeds.

  python tools/bench_nanogpt.py --input_file=../shared/data/tinyshakespeare.txt --seeds=1337,1,2
  python tools/bench_nanogpt.py --seeds= --interleaved_rounds=20   # per-step ratio only

Each run is a fresh subprocess, one after the other (never two at once, so neither steals the
other's cores): nanoGPT's model and training loop in PyTorch (eager, as its CPU command runs it:
`--compile=False`; its checkpoint saved whenever val improves, as its shakespeare_char config
does), then `python -m gptjax.train` with configs/recipes/shakespeare_char_cpu.py, by default with
an empty compilation cache (a first run; --compilation_cache=warm: every later run).
Prints wall time (process start to exit), the median step time inside the loop, the final val
loss twice: each engine's own 20-batch estimate, as nanoGPT reports it (it varies by ~0.014 with the
batches drawn), and the exact loss over the whole val split (gptjax.benchmark.split_loss; the same
windows for both engines, measured after the run and outside its wall time); their means over seeds
and gptjax's speed-up; writes a plot of every run's val loss against the step. Needs torch (the
`[test]` extra).

With --interleaved_rounds, both engines' train steps also run in one process, alternating blocks of
40 steps: on a shared machine whose speed drifts for minutes at a time (this project's CI VMs
do, by up to 60%), that ratio is the fair per-step comparison; the sequential runs give wall time.

The PyTorch side follows nanoGPT's model.py and train.py: character vocabulary (65 for tiny
Shakespeare) from its data/shakespeare_char/prepare.py (--nanogpt_vocab=bytes: gptjax's 256 bytes), 90/10 split, GPT-2 init with scaled
residual projections, tied head, exact GELU, no biases, fused scaled_dot_product_attention,
AdamW (decay on 2-D weights), warmup + cosine lr, clipping at 1.0, evaluation every 250 steps.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import flags
from ml_collections import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from gptjax import cli  # noqa: E402
from gptjax.config import load_config  # noqa: E402
from gptjax.errors import DataError, UserError  # noqa: E402

RECIPE_FILE = os.path.join(REPO, "configs", "recipes", "shakespeare_char_cpu.py")
# The PyTorch side trains with exactly the hyperparameters gptjax reads from the recipe file.
_RECIPE_CONFIG = load_config(RECIPE_FILE)
RECIPE = {key: _RECIPE_CONFIG[key] for key in (
    "n_layer", "n_head", "n_embd", "block_size", "batch_size", "max_iters", "lr_decay_iters",
    "learning_rate", "min_lr", "warmup_iters", "beta1", "beta2", "weight_decay", "grad_clip",
    "eval_interval", "eval_iters")}

_INPUT = flags.DEFINE_string("input_file", os.path.join(REPO, "..", "shared", "data",
                                                        "tinyshakespeare.txt"), "Text to train on.")
_SEEDS = flags.DEFINE_list("seeds", ["1337"], "Seeds; every engine trains once per seed.")
_ITERS = flags.DEFINE_integer("max_iters", RECIPE["max_iters"], "Iterations (the recipe: 2000).")
_ENGINES = flags.DEFINE_list("engines", ["nanogpt", "gptjax"], "Which to run.")
_GPTJAX_ARGS = flags.DEFINE_string(
    "gptjax_args", "--config.cpu_devices=2 --config.mesh.data=-1 --config.mesh.fsdp=1",
    "Extra flags for python -m gptjax.train.")
_PLOT = flags.DEFINE_string("plot", "bench_nanogpt.png", "Val loss curves of every run ('' = none).")
_INTERLEAVED = flags.DEFINE_integer(
    "interleaved_rounds", 0, "Also time both engines' train steps in one process, alternating "
    "blocks of 40 steps for this many rounds (0 = off): the per-step ratio under the same load.")
_VOCAB = flags.DEFINE_enum(
    "nanogpt_vocab", "chars", ["chars", "bytes"], "nanoGPT's vocabulary: its prepare.py's "
    "characters of the text (65 for tiny Shakespeare), or gptjax's 256 bytes (the same data and "
    "output layer as gptjax, so the engines differ only in the engine).")
_CACHE = flags.DEFINE_enum(
    "compilation_cache", "cold", ["cold", "warm"], "gptjax's compiled programs: 'cold', an empty "
    "cache per run (a first run), or 'warm', a cache filled by an untimed 1-step run beforehand "
    "(every run after the first).")
_WORKER = flags.DEFINE_string("nanogpt_worker", "", "Internal: run the PyTorch side, print JSON.")
_INTERLEAVED_WORKER = flags.DEFINE_bool("interleaved_worker", False, "Internal: run "
                                        "interleaved_steps, print JSON.")


def make_nanogpt(input_file: str, seed: int, max_iters: int, vocab: str = "chars") -> dict:
  """nanoGPT's model, optimizer and data on its char-level tiny Shakespeare (or, vocab="bytes",
  gptjax's byte-level data): a dict of closures, step(it) (one iteration of its train.py loop),
  estimate_loss(), save(path) (its checkpoint) and full_val() (whole split)."""
  import numpy as np
  import torch
  from torch import nn
  from torch.nn import functional as F

  r = dict(RECIPE, max_iters=max_iters)
  text = open(input_file, encoding="utf-8").read()
  chars = sorted(set(text))
  stoi = {c: i for i, c in enumerate(chars)}
  ids = np.array([stoi[c] for c in text], dtype=np.uint16)
  if vocab == "bytes":  # gptjax's tokenizer for vocab 256: the UTF-8 bytes
    chars, ids = range(256), np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.uint16)
  n = int(0.9 * len(ids))
  splits = dict(train=ids[:n], val=ids[n:])
  C, H, T, V = r["n_embd"], r["n_head"], r["block_size"], len(chars)

  class LayerNorm(nn.Module):
    def __init__(self):
      super().__init__()
      self.weight = nn.Parameter(torch.ones(C))

    def forward(self, x):
      return F.layer_norm(x, self.weight.shape, self.weight, None, 1e-5)

  class Block(nn.Module):
    def __init__(self):
      super().__init__()
      self.ln_1, self.ln_2 = LayerNorm(), LayerNorm()
      self.c_attn, self.attn_proj = nn.Linear(C, 3 * C, bias=False), nn.Linear(C, C, bias=False)
      self.c_fc, self.c_proj = nn.Linear(C, 4 * C, bias=False), nn.Linear(4 * C, C, bias=False)

    def forward(self, x):
      B, T_, _ = x.shape
      q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
      q, k, v = (t.view(B, T_, H, C // H).transpose(1, 2) for t in (q, k, v))
      y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=True)
      x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(B, T_, C))
      return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x))))

  class GPT(nn.Module):
    def __init__(self):
      super().__init__()
      self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
      self.h = nn.ModuleList([Block() for _ in range(r["n_layer"])])
      self.ln_f = LayerNorm()
      self.lm_head = nn.Linear(C, V, bias=False)
      self.wte.weight = self.lm_head.weight
      for name, p in self.named_parameters():
        if p.dim() >= 2:
          std = 0.02 / math.sqrt(2 * r["n_layer"]) if name.endswith(("c_proj.weight",
                                                                     "attn_proj.weight")) else 0.02
          torch.nn.init.normal_(p, mean=0.0, std=std)

    def forward(self, idx, targets):
      x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
      for block in self.h:
        x = block(x)
      logits = self.lm_head(self.ln_f(x))
      return F.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-1)

  torch.manual_seed(seed)
  model = GPT()
  params = [p for p in model.parameters()]
  optimizer = torch.optim.AdamW(
      [{"params": [p for p in params if p.dim() >= 2], "weight_decay": r["weight_decay"]},
       {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
      lr=r["learning_rate"], betas=(r["beta1"], r["beta2"]))

  def get_batch(split):
    data = splits[split]
    ix = torch.randint(len(data) - T, (r["batch_size"],))
    x = torch.stack([torch.from_numpy(data[i:i + T].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + T].astype(np.int64)) for i in ix])
    return x, y

  def get_lr(it):
    if it < r["warmup_iters"]:
      return r["learning_rate"] * (it + 1) / (r["warmup_iters"] + 1)
    if it > r["lr_decay_iters"]:
      return r["min_lr"]
    ratio = (it - r["warmup_iters"]) / (r["lr_decay_iters"] - r["warmup_iters"])
    return r["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (r["learning_rate"] - r["min_lr"])

  @torch.no_grad()
  def estimate_loss():
    model.eval()
    out = {split: float(torch.tensor([model(*get_batch(split)).item()
                                      for _ in range(r["eval_iters"])]).mean())
           for split in ("train", "val")}
    model.train()
    return out

  batch = [get_batch("train")]

  def step(it):
    for group in optimizer.param_groups:
      group["lr"] = get_lr(it)
    loss = model(*batch[0])
    batch[0] = get_batch("train")
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), r["grad_clip"])
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss.item()  # nanoGPT's CPU command logs every step (--log_interval=1)

  @torch.no_grad()
  def full_val():  # the whole val split, cut as gptjax.benchmark.split_loss cuts it
    model.eval()
    n = (len(splits["val"]) - 1) // T
    windows = torch.from_numpy(np.stack([splits["val"][i * T:i * T + T + 1]
                                         for i in range(n)]).astype(np.int64))
    return sum(model(w[:, :-1], w[:, 1:].contiguous()).item() * len(w)
               for w in windows.split(128)) / n

  def save(path):  # train.py's checkpoint, written whenever the val loss improves
    torch.save(dict(model=model.state_dict(), optimizer=optimizer.state_dict(), config=r), path)

  return dict(step=step, estimate_loss=estimate_loss, full_val=full_val, save=save,
              eval_interval=r["eval_interval"])


def nanogpt_train(input_file: str, seed: int, max_iters: int, vocab: str = "chars") -> dict:
  """nanoGPT's train.py loop on its char-level tiny Shakespeare data; returns losses and times."""
  nano = make_nanogpt(input_file, seed, max_iters, vocab)
  out_dir = tempfile.TemporaryDirectory()
  best_val = math.inf
  evals, step_times = [], []
  t0 = time.perf_counter()
  for it in range(max_iters + 1):  # nanoGPT stops once iter_num > max_iters
    if it % nano["eval_interval"] == 0:
      evals.append(dict(step=it, **nano["estimate_loss"]()))
      if it > 0 and evals[-1]["val"] < best_val:  # its shakespeare_char config saves on improvement
        best_val = evals[-1]["val"]
        nano["save"](os.path.join(out_dir.name, "ckpt.pt"))
      t0 = time.perf_counter()
    nano["step"](it)
    t1 = time.perf_counter()
    step_times.append(t1 - t0)
    t0 = t1
  full_val_start = time.perf_counter()
  full_val = nano["full_val"]()
  out_dir.cleanup()
  return dict(evals=evals, step_ms=1000 * statistics.median(step_times), full_val=full_val,
              full_val_s=time.perf_counter() - full_val_start)


def interleaved_steps(input_file: str, rounds: int, steps: int = 40) -> list[tuple[float, float]]:
  """Both engines' train steps in one process, alternating blocks of `steps`: per round, the median
  ms/step of nanoGPT and of gptjax. Each block sees the same machine as its neighbour, so the ratio
  holds when the machine's speed drifts (on a shared VM it does, by up to 60% for minutes)."""
  import numpy as np
  from gptjax import data as data_lib
  from gptjax import sharding
  from gptjax.config import validate
  # --gptjax_args parsed as `python -m gptjax.train` parses them: ml_collections config flags.
  argv = [sys.argv[0], f"--config={RECIPE_FILE}", *_GPTJAX_ARGS.value.split()]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=flag_values, sys_argv=argv)
  flag_values(argv)
  config = flag_values.config
  config.input_file = input_file
  scratch = tempfile.TemporaryDirectory()  # gptjax's token cache, removed on return
  config.out_dir = scratch.name
  validate(config)
  sharding.use_cpu_devices(config.cpu_devices)
  import jax
  from gptjax.step import build, global_batch, mesh_context
  nano = make_nanogpt(input_file, seed=0, max_iters=10 ** 9, vocab=_VOCAB.value)
  mesh = sharding.make_mesh(config)
  setup, tokens = build(config, mesh), data_lib.prepare(config).train
  rows = sharding.process_batch_rows(mesh, config.batch_size)
  with mesh_context(mesh):
    state = [setup.init(jax.random.key(0))]

    def gptjax_step(it):  # as gptjax's loop: the batch, the step, waiting for it
      windows = data_lib.train_batch(tokens, 0, it, config.grad_accum_steps, config.batch_size,
                                     config.block_size, rows)
      state[0], metrics = setup.train_step(state[0], global_batch(windows, mesh, config.batch_size))
      jax.block_until_ready(metrics)

    medians, it = [], 0
    for _ in range(rounds + 1):  # round 0 compiles and warms up; not reported
      times = {}
      for name, step in (("nanogpt", nano["step"]), ("gptjax", gptjax_step)):
        times[name] = []
        for _ in range(steps):
          start = time.perf_counter()
          step(it)
          times[name].append(time.perf_counter() - start)
          it += 1
      medians.append(tuple(1000 * float(np.median(times[k][2:])) for k in ("nanogpt", "gptjax")))
  scratch.cleanup()
  return medians[1:]


def _run(cmd: list[str], what: str, stdout=subprocess.PIPE, cwd: str | None = None,
         env: dict | None = None) -> str:
  """Runs a child to completion and returns its stdout; a failing child is one clear error (its
  own message, e.g. a bad --gptjax_args value, is printed above it), not a traceback."""
  proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=stdout,
                        stderr=None if stdout is subprocess.DEVNULL else subprocess.PIPE, text=True)
  if proc.returncode:
    if proc.stderr:
      sys.stderr.write(proc.stderr[-3000:])
    raise UserError(f"{what} failed with exit code {proc.returncode}; its error is above. Fix "
                    f"that (e.g. the value passed with --gptjax_args) and run again.")
  return proc.stdout


def train_gptjax(seed: int, out_dir: str, cache_dir: str, max_iters: int) -> float:
  """`python -m gptjax.train` on the recipe in a subprocess, its compilation cache in `cache_dir`
  (not the user's); returns the wall time, process start to exit."""
  cmd = [sys.executable, "-m", "gptjax.train",
         f"--config={RECIPE_FILE}",
         f"--config.input_file={os.path.abspath(_INPUT.value)}", f"--config.seed={seed}",
         f"--config.max_iters={max_iters}", f"--config.out_dir={out_dir}",
         f"--config.model_name=seed{seed}", f"--config.compilation_cache_dir={cache_dir}",
         ] + _GPTJAX_ARGS.value.split()
  start = time.perf_counter()
  _run(cmd, f"python -m gptjax.train (seed {seed})", stdout=subprocess.DEVNULL, cwd=REPO,
       env={**os.environ, "JAX_COMPILATION_CACHE_DIR": ""})
  return time.perf_counter() - start


def run_gptjax(seed: int, out_dir: str, cache_dir: str) -> tuple[list[dict], float, float, float]:
  """Trains; (metrics records, median ms/step, wall s, whole-split val loss)."""
  wall = train_gptjax(seed, out_dir, cache_dir, _ITERS.value)
  run_dir = os.path.join(out_dir, f"seed{seed}")
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  step_ms = statistics.median(r["step_time_ms"] for r in records if r["step"] > 1)
  from gptjax import data as data_lib
  from gptjax.benchmark import split_loss
  from gptjax.checkpoint import load_run
  model, params, config, _ = load_run(run_dir)
  full_val, _ = split_loss(model, params, data_lib.prepare(config).val)
  return records, step_ms, wall, full_val


def main(argv) -> None:
  if _WORKER.value:  # the PyTorch side, in its own process
    seed, iters = (int(x) for x in _WORKER.value.split(","))
    print("RESULT " + json.dumps(nanogpt_train(_INPUT.value, seed, iters, _VOCAB.value)))
    return
  if _INTERLEAVED_WORKER.value:  # both engines in one process of their own
    print("RESULT " + json.dumps(interleaved_steps(_INPUT.value, _INTERLEAVED.value)))
    return
  if not os.path.isfile(_INPUT.value):
    raise DataError(f"--input_file {_INPUT.value!r} does not exist. Fix: pass a UTF-8 text file, "
                    f"e.g. --input_file=../shared/data/tinyshakespeare.txt.")
  import platform
  import torch
  import jax
  print(f"machine: {platform.machine()}, {os.cpu_count()} cores | torch {torch.__version__} "
        f"({torch.get_num_threads()} threads) | jax {jax.__version__} | recipe: "
        + ", ".join(f"{k}={v}" for k, v in dict(RECIPE, max_iters=_ITERS.value).items())
        + f" | nanoGPT vocabulary: {_VOCAB.value} | gptjax compilation cache: {_CACHE.value}")
  rows, curves = [], {}
  shared_cache = tempfile.TemporaryDirectory()
  if _CACHE.value == "warm" and "gptjax" in _ENGINES.value and _SEEDS.value:
    with tempfile.TemporaryDirectory() as out_dir:  # untimed: fills the cache
      train_gptjax(0, out_dir, shared_cache.name, max_iters=1)
  for seed in (int(s) for s in _SEEDS.value):
    for engine in _ENGINES.value:
      if engine == "nanogpt":
        start = time.perf_counter()
        out = _run([sys.executable, os.path.abspath(__file__), f"--input_file={_INPUT.value}",
                    f"--nanogpt_worker={seed},{_ITERS.value}", f"--nanogpt_vocab={_VOCAB.value}"],
                   f"the nanoGPT run (seed {seed})")
        result = json.loads(out.split("RESULT ", 1)[1])
        # Process start to exit, less the whole-split evaluation after training (gptjax's is
        # made outside its process).
        wall = time.perf_counter() - start - result["full_val_s"]
        val, step_ms, full_val = result["evals"][-1]["val"], result["step_ms"], result["full_val"]
        curve = [(e["step"], e["val"]) for e in result["evals"]]
      else:
        with tempfile.TemporaryDirectory() as out_dir, tempfile.TemporaryDirectory() as empty:
          cache = shared_cache.name if _CACHE.value == "warm" else empty
          records, step_ms, wall, full_val = run_gptjax(seed, out_dir, cache)
        evals = [r for r in records if "val_loss" in r]
        val = evals[-1]["val_loss"]
        curve = [(r["step"], r["val_loss"]) for r in evals]
      rows.append(dict(engine=engine, seed=seed, wall=wall, step_ms=step_ms, val=val,
                       full_val=full_val))
      curves[(engine, seed)] = curve
      print(f"{engine:>8} seed {seed:>5}: wall {wall:6.1f} s | {step_ms:5.1f} ms/step in the loop | "
            f"val loss {val:.4f} (whole split {full_val:.4f})", flush=True)
  shared_cache.cleanup()
  if rows:
    print(f"\n{'engine':>8} {'runs':>5} {'wall s':>8} {'ms/step':>8} {'val, 20 batches':>18} "
          f"{'val, whole split':>18}")
  means = {}
  for engine in (_ENGINES.value if rows else []):
    mine = [r for r in rows if r["engine"] == engine]
    means[engine] = {k: statistics.mean(r[k] for r in mine)
                     for k in ("wall", "step_ms", "val", "full_val")}
    spread = {k: statistics.stdev(r[k] for r in mine) if len(mine) > 1 else 0.0
              for k in ("val", "full_val")}
    print(f"{engine:>8} {len(mine):>5} {means[engine]['wall']:>8.1f} "
          f"{means[engine]['step_ms']:>8.1f} {means[engine]['val']:>10.4f} ± {spread['val']:.4f} "
          f"{means[engine]['full_val']:>10.4f} ± {spread['full_val']:.4f}")
  if set(means) == {"nanogpt", "gptjax"}:
    print(f"\ngptjax speed-up over nanoGPT: {means['nanogpt']['wall'] / means['gptjax']['wall']:.2f}x "
          f"wall, {means['nanogpt']['step_ms'] / means['gptjax']['step_ms']:.2f}x per step")
  if _INTERLEAVED.value:
    out = _run([sys.executable, os.path.abspath(__file__), f"--input_file={_INPUT.value}",
                f"--interleaved_rounds={_INTERLEAVED.value}", "--interleaved_worker",
                f"--nanogpt_vocab={_VOCAB.value}",
                f"--gptjax_args={_GPTJAX_ARGS.value}"], "the interleaved run")
    medians = json.loads(out.split("RESULT ", 1)[1])
    ratios = [nano / jax_ms for nano, jax_ms in medians]
    print(f"\ninterleaved in one process, {len(medians)} rounds of 40 steps each (median ms/step):")
    for i, ((nano, jax_ms), ratio) in enumerate(zip(medians, ratios)):
      print(f"  round {i + 1:>2}: nanoGPT {nano:5.1f} | gptjax {jax_ms:5.1f} | {ratio:.2f}x")
    print(f"gptjax speed-up per step, interleaved: {statistics.median(ratios):.2f}x median of "
          f"rounds ({min(ratios):.2f}x-{max(ratios):.2f}x)")
  if _PLOT.value and curves:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, end) = plt.subplots(1, 2, figsize=(9, 4), width_ratios=(3, 1))
    for (engine, seed), curve in curves.items():
      ax.plot(*zip(*curve), marker="o", ms=3, color="C0" if engine == "gptjax" else "C1",
              label=f"{engine} seed {seed}")
    ax.set(xlabel="step", ylabel="val loss (20 batches)", ylim=(1.8, 2.6),
           title="nanoGPT CPU recipe, tiny Shakespeare")
    ax.legend(fontsize=7)
    for x, key in enumerate(("val", "full_val")):  # the final losses, both measures
      for i, engine in enumerate(_ENGINES.value):
        values = [r[key] for r in rows if r["engine"] == engine]
        end.plot([x + 0.15 * (i - 0.5)] * len(values), values, "o",
                 color="C0" if engine == "gptjax" else "C1", label=engine if x == 0 else None)
    end.axhline(1.88, color="gray", ls="--", lw=1, label="1.88 (nanoGPT README)")
    end.set(xticks=[0, 1], xticklabels=["20 batches", "whole split"], xlim=(-0.5, 1.5),
            title=f"final val loss, step {_ITERS.value}")
    end.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    fig.savefig(_PLOT.value, dpi=120)
    print(f"plot: {_PLOT.value}")


if __name__ == "__main__":
  cli.run(main)
