"""Sampling as a whole process: `python -m gptjax.sample` beside nanoGPT's generate.

  python tools/bench_sample.py                                 # small_char, small, 350M_1024
  python tools/bench_sample.py --presets=small_char --new_tokens=1000 --repeats=5

For each preset, a run directory of randomly initialised weights is written once under --work_dir
(speed does not depend on the values), and the same weights are saved for nanoGPT's model
(tools/nanogpt_reference.py, PyTorch eager, float32, as nanoGPT's sample.py runs on a CPU). Each
engine then runs as a fresh subprocess, one after the other, and its wall time is measured from
process start to exit: imports, checkpoint restore, compiling (or loading from the compilation
cache), generating and printing. Both generate from the prompt "\\n" with temperature 0.8 and
top-k 200, one sample. gptjax runs first once with an empty compilation cache (a first run: the
`cold` column), then --repeats times with the cache that run filled (every later run); the median
is shown. Tokens/s and per-token latency are each engine's own account of its generation alone
(gptjax's last stderr line; nanoGPT's loop timed around generate). Needs torch (the `[test]` extra).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time

from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TEMPERATURE, TOP_K, PROMPT, SEED = 0.8, 200, "\n", 1337
_GPTJAX_SUMMARY = re.compile(r"x (\d+) new tokens in ([\d.]+) s")


def define_flags(values) -> None:
  flags.DEFINE_list("presets", ["small_char", "small", "350M_1024"],
                    "Shipped presets, by name.",
                    flag_values=values)
  flags.DEFINE_list("new_tokens", ["1000", "500", "50"],
                    "New tokens per preset (one value: all).",
                    flag_values=values)
  flags.DEFINE_integer("repeats",
                       3,
                       "Timed gptjax runs per preset (median shown).",
                       flag_values=values)
  flags.DEFINE_integer("nanogpt_repeats",
                       1,
                       "Timed nanoGPT runs per preset (median shown).",
                       flag_values=values)
  flags.DEFINE_string("work_dir",
                      "/tmp/gptjax_bench_sample",
                      "Run directories, weights, caches.",
                      flag_values=values)


def make_run(preset: str, run_dir: str) -> None:
  """A run directory holding `preset` with random weights (step 0), as training would write it."""
  import types

  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from gptjax import presets
  from gptjax.checkpoint import Checkpointer
  from gptjax.config import ModelConfig
  from gptjax.model import GPT

  config = presets.load(preset)
  config.out_dir, config.model_name = os.path.dirname(run_dir), os.path.basename(run_dir)
  model = GPT(ModelConfig.from_config(config))
  params = jax.jit(lambda: nn.meta.unbox(
      model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]))()
  checkpointer = Checkpointer(run_dir)
  # Sampling reads params only; Orbax refuses an empty item, so the optimizer state is a stand-in.
  state = types.SimpleNamespace(params=params, opt_state={"unused": jnp.zeros(())})
  checkpointer.save(0, state, dict(architecture=model.config.architecture(),
                                   config=config.to_dict()))
  checkpointer.close()


def export_for_nanogpt(run_dir: str, path: str) -> None:
  """The run's weights as a nanoGPT state dict (its nn.Linear weights are HF's transposed)."""
  import numpy as np
  import torch
  from flax import traverse_util

  from gptjax import hf_gpt2
  from gptjax.checkpoint import load_run
  from gptjax.config import ModelConfig

  model, params, config, _, _ = load_run(run_dir)
  flat = traverse_util.flatten_dict(params)
  state = {}
  for key, (gptjax_path, hf_shape,
            _) in hf_gpt2.tensor_table(ModelConfig(**{
                **model.config.architecture(), "bias": True
            })).items():
    if gptjax_path not in flat:  # a bias of a model without biases
      continue
    value = np.asarray(flat[gptjax_path], np.float32).reshape(hf_shape)
    if key.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
      value = value.T
    state[f"transformer.{key}"] = torch.from_numpy(np.array(value))  # a writable copy
  state["lm_head.weight"] = state["transformer.wte.weight"]
  model_args = dict(model.config.architecture(), dropout=0.0)
  torch.save(
      dict(model=state,
           model_args=model_args,
           tokenizer=config.tokenizer,
           vocab_size=config.vocab_size), path)


def nanogpt_worker(path: str, new_tokens: int) -> None:
  """nanoGPT's sample.py on a CPU: load the checkpoint, generate, decode, print."""
  import ml_collections
  import torch

  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from nanogpt_reference import GPT, GPTConfig

  from gptjax.config import resolve_tokenizer
  from gptjax.data.tokenizer import get_tokenizer

  checkpoint = torch.load(path, map_location="cpu", weights_only=True)
  model = GPT(GPTConfig(**checkpoint["model_args"]))
  model.load_state_dict(checkpoint["model"])
  model.eval()
  torch.manual_seed(SEED)
  tokenizer = get_tokenizer(
      resolve_tokenizer(
          ml_collections.ConfigDict(
              dict(tokenizer=checkpoint["tokenizer"], vocab_size=checkpoint["vocab_size"]))))
  x = torch.tensor([list(tokenizer.encode(PROMPT))], dtype=torch.long)
  start = time.perf_counter()
  y = model.generate(x, new_tokens, temperature=TEMPERATURE, top_k=TOP_K)
  seconds = time.perf_counter() - start
  print(tokenizer.decode(y[0].tolist()))
  print(f"# nanogpt: {new_tokens} new tokens in {seconds:.3f} s", file=sys.stderr)


def timed(command: list[str], env: dict | None = None) -> tuple[float, str]:
  """(wall seconds from process start to exit, stderr) of a subprocess; raises if it fails."""
  start = time.perf_counter()
  result = subprocess.run(command,
                          stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE,
                          text=True,
                          env={
                              **os.environ,
                              **(env or {})
                          },
                          cwd=REPO)
  wall = time.perf_counter() - start
  if result.returncode != 0:
    raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
  return wall, result.stderr


def generation_seconds(stderr: str, pattern=_GPTJAX_SUMMARY) -> tuple[int, float]:
  """(new tokens, seconds) from an engine's summary line on stderr."""
  found = pattern.findall(stderr)
  if not found:
    raise RuntimeError(f"no timing line in:\n{stderr[-2000:]}")
  tokens, seconds = found[-1]
  return int(tokens), float(seconds)


def bench_preset(preset: str, new_tokens: int, f) -> dict:
  run_dir = os.path.join(f.work_dir, preset)
  weights = os.path.join(f.work_dir, f"{preset}_nanogpt.pt")
  if not os.path.isdir(os.path.join(run_dir, "checkpoints")):
    make_run(preset, run_dir)
  if not os.path.isfile(weights):
    export_for_nanogpt(run_dir, weights)
  cache = os.path.join(f.work_dir, f"{preset}_jax_cache")
  shutil.rmtree(cache, ignore_errors=True)
  gptjax = [
      sys.executable, "-m", "gptjax.sample", f"--run_dir={run_dir}", f"--prompt={PROMPT}",
      f"--max_new_tokens={new_tokens}", f"--temperature={TEMPERATURE}", f"--top_k={TOP_K}",
      f"--seed={SEED}"
  ]
  env = dict(JAX_COMPILATION_CACHE_DIR=cache, PYTHONPATH=REPO)
  cold, _ = timed(gptjax, env)
  runs = [timed(gptjax, env) for _ in range(f.repeats)]
  nanogpt = [
      sys.executable,
      os.path.abspath(__file__), "--nanogpt_worker", weights,
      str(new_tokens)
  ]
  nano_runs = [timed(nanogpt, env) for _ in range(f.nanogpt_repeats)]
  nano_pattern = re.compile(r"nanogpt: (\d+) new tokens in ([\d.]+) s")
  result = dict(preset=preset, new_tokens=new_tokens, gptjax_cold_s=cold)
  for name, engine_runs, pattern in (("gptjax", runs, _GPTJAX_SUMMARY), ("nanogpt", nano_runs,
                                                                         nano_pattern)):
    walls = [wall for wall, _ in engine_runs]
    gen_s = statistics.median(generation_seconds(err, pattern)[1] for _, err in engine_runs)
    result.update({
        f"{name}_wall_s": statistics.median(walls),
        f"{name}_walls": walls,
        f"{name}_tokens_per_s": new_tokens / gen_s,
        f"{name}_ms_per_token": 1000 * gen_s / new_tokens
    })
  return result


def cpu_name() -> str:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return re.search(r"Model name:\s*(.+)", out).group(1).strip()
  except Exception:  # no lscpu
    return platform.processor() or platform.machine()


def main(argv) -> None:
  del argv
  f = flags.FLAGS
  counts = [int(n) for n in f.new_tokens]
  counts = counts * len(f.presets) if len(counts) == 1 else counts
  os.makedirs(f.work_dir, exist_ok=True)
  print(
      f"machine: {cpu_name()}, {os.cpu_count()} CPUs; load average before: "
      f"{os.getloadavg()[0]:.2f}",
      flush=True)
  rows = []
  for preset, new_tokens in zip(f.presets, counts):
    rows.append(bench_preset(preset, new_tokens, f))
    print(json.dumps(rows[-1]), flush=True)
  print(f"\nload average after: {os.getloadavg()[0]:.2f}\n")
  print("| preset | new tokens | engine | whole process s | tokens/s | ms/token | speed-up |")
  print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
  for r in rows:
    for engine in ("nanogpt", "gptjax"):
      speedup = r["nanogpt_wall_s"] / r[f"{engine}_wall_s"]
      wall = f"{r[f'{engine}_wall_s']:.2f}" + (f" (first run {r['gptjax_cold_s']:.2f})"
                                               if engine == "gptjax" else "")
      print(f"| {r['preset']} | {r['new_tokens']} | {engine} | {wall} | "
            f"{r[f'{engine}_tokens_per_s']:,.1f} | {r[f'{engine}_ms_per_token']:.2f} | "
            f"{speedup:.1f}x |")


if __name__ == "__main__":
  if sys.argv[1:2] == ["--nanogpt_worker"]:  # nanoGPT's process: PyTorch only, no JAX imported
    nanogpt_worker(sys.argv[2], int(sys.argv[3]))
  else:
    from gptjax import cli
    cli.run_command(main, define_flags, __doc__)
