"""Calibrates the planner's analytic memory model against XLA's compiled figures.

  python tools/calibrate_memory.py --target=tpu-v5e-1 --out=/tmp/tpu.jsonl     # compile the probes
  python tools/calibrate_memory.py --fit /tmp/tpu.jsonl /tmp/gpu.jsonl /tmp/cpu.jsonl

The first form compiles small probe models (1-3 layers, assorted widths, contexts, vocabularies and
batches) for every dtype x remat x dropout setting on the target and writes, per probe, the textbook
activation terms of gptjax.params.activation_terms beside the bytes XLA's memory analysis reports
(attention as XLA's einsum everywhere: cuDNN's kernel compiles only beside a real GPU; the
newer options - fused attention, remat policies, a chunked loss, scan_layers - are not probed yet,
and the planner says so where it uses them).
The second fits, per platform and setting, the multipliers that turn the terms into XLA's bytes
(least squares on relative error) and writes gptjax/memory_model.json, which the planner reads.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_FILE = os.path.join(REPO_ROOT, "gptjax", "planner", "memory_model.json")
# (n_layer, n_embd, n_head, block_size, batch_size, vocab_size): logits-heavy, layer-heavy,
# attention-heavy and mixed shapes, so that every term's multiplier is pinned down.
PROBES = (
    (1, 256, 4, 256, 16, 32768),
    (2, 256, 4, 256, 16, 32768),
    (2, 512, 8, 512, 4, 512),
    (2, 256, 8, 1024, 2, 512),
    (3, 384, 6, 256, 8, 8192),
    (2, 1024, 8, 128, 32, 512),
    (4, 512, 8, 256, 16, 2048),
    (1, 768, 12, 512, 8, 4096),
    (2, 256, 4, 512, 32, 8192),
)
# Probes whose temporaries are below this are left out of the stated error: at tens of MiB XLA's
# fixed costs and in-place updates dominate, and no preset is that small.
SMALL_TEMP = 100 * 2**20
SETTINGS = list(itertools.product(("float32", "bfloat16"), (False, True), (0.0, 0.2)))


def probe_rows(target_name: str, probes=PROBES, done=()):
  """Compiles every probe in every setting for the target (but those in `done`: (key, probe)
  pairs); yields one JSON row each."""
  import jax
  from gptjax.config import ModelConfig, get_base_config
  from gptjax.planner import compiled, estimate, memory_model, options, targets
  target = targets.parse_target(target_name)
  devices = targets.devices(target)
  for (dtype, remat, dropout), probe in itertools.product(SETTINGS, probes):
    n_layer, n_embd, n_head, block_size, batch, vocab = probe
    config = get_base_config()
    config.update(
        dict(n_layer=n_layer,
             n_embd=n_embd,
             n_head=n_head,
             block_size=block_size,
             vocab_size=vocab,
             tokenizer="gpt2",
             batch_size=batch * target.num_devices,
             dtype=dtype,
             remat=remat,
             dropout=dropout,
             attention="xla"))
    config.mesh.update(dict(data=1, fsdp=-1, tensor=1))
    model = ModelConfig.from_config(config).for_platform(target.platform)
    step = options.step_options(config, target.platform)
    key = memory_model.memory_model_key(target.platform, model, step)
    if (key, list(probe)) in done:
      continue
    figures = compiled.compiled_figures(config, devices, fast=False)
    mesh = jax.sharding.AbstractMesh((1, target.num_devices, 1), ("data", "fsdp", "tensor"))
    param_bytes, optimizer_bytes = estimate.state_bytes(config, mesh)
    row = dict(target=target.name,
               platform=target.platform,
               key=key,
               probe=probe,
               dtype=dtype,
               remat=remat,
               dropout=dropout,
               terms=memory_model.activation_terms(model, step, batch * block_size, 1,
                                                   target.num_devices),
               temp=figures.temp,
               arguments=figures.arguments,
               code=figures.code,
               params=param_bytes,
               optimizer=optimizer_bytes,
               compile_seconds=figures.seconds)
    print(json.dumps(row), flush=True)
    yield row


def fit(rows: list[dict]) -> dict:
  """Per key, the multipliers minimising the model's error on XLA's temporaries.

  Without remat the model is linear in its multipliers (least squares). With remat it holds a
  max(logits phase, one block's recomputation): each probe is assigned the phase that dominates
  under the current multipliers, the linear problem solved, and this repeated until stable. The
  kept block inputs are a small share of these shallow probes, so their multiplier is poorly
  determined: it is held at no less than 1.0 (a block's input cannot take less than itself).
  """
  from gptjax.planner import memory_model
  model = {}
  for key in sorted({row["key"] for row in rows}):
    group = [row for row in rows if row["key"] == key]
    remat = group[0]["remat"]
    k = dict(gradients=1.0,
             logits=0.7,
             channels=0.0 if remat else 1.0,
             scores=0.0 if remat else 1.0,
             channels_work=1.0,
             scores_work=1.0,
             block_input=1.0 if remat else 0.0)
    for _ in range(30):
      new = _solve(group, remat, k, free_input=True)
      if remat and new["block_input"] < 1.0:
        new = _solve(group, remat, {**k, "block_input": 1.0}, free_input=False)
      if all(abs(new[n] - k[n]) < 1e-9 for n in k):
        break
      k = new
    errors = [
        memory_model.model_temporary_bytes(row["terms"], row["params"], row["probe"][0], remat, k) /
        row["temp"] - 1 for row in group if row["temp"] >= SMALL_TEMP
    ]
    model[key] = dict(k, probes=len(group), max_relative_error=max(abs(e) for e in errors))
  return model


def fit_code(rows: list[dict]) -> dict[str, list[float]]:
  """Per platform, the compiled program's bytes as a + b * n_layer (TPUs keep it in HBM)."""
  import numpy as np
  result = {}
  for platform in sorted({row["platform"] for row in rows}):
    group = [row for row in rows if row["platform"] == platform]
    design = np.array([[1.0, row["probe"][0]] for row in group])
    (a, b), *_ = np.linalg.lstsq(design,
                                 np.array([float(row["code"]) for row in group]),
                                 rcond=None)
    result[platform] = [max(0.0, float(a)), max(0.0, float(b))]
  return result


def _solve(group: list[dict], remat: bool, k: dict, free_input: bool) -> dict:
  """One least-squares solve for the multipliers, each probe in the phase `k` says dominates."""
  import numpy as np
  names = ["gradients", "logits", "channels_work", "scores_work"] + (
      [] if remat else ["channels", "scores"]) + (["block_input"] if remat and free_input else [])
  design, target = [], []
  for row in group:
    layers, t = row["probe"][0], row["terms"]
    kept = 0.0
    if remat:
      logits_phase = k["logits"] * t["logits"] >= (k["channels_work"] * t["channels"] +
                                                   k["scores_work"] * t["scores"])
      columns = dict(logits=t["logits"] * logits_phase,
                     channels_work=t["channels"] * (not logits_phase),
                     scores_work=t["scores"] * (not logits_phase),
                     block_input=layers * t["block_input"])
      kept = 0.0 if free_input else k["block_input"] * layers * t["block_input"]
    else:
      columns = dict(logits=t["logits"],
                     channels=layers * t["channels"],
                     scores=layers * t["scores"],
                     channels_work=t["channels"],
                     scores_work=t["scores"])
    columns["gradients"] = row["params"]
    # Weighted by 1/sqrt(temp): between absolute error (the big probes, most like real presets,
    # decide) and relative error (every probe counts).
    weight = row["temp"]**-0.5
    design.append([columns[n] * weight for n in names])
    target.append((row["temp"] - kept) * weight)
  solution, *_ = np.linalg.lstsq(np.array(design), np.array(target), rcond=None)
  return {**k, **{n: max(0.0, float(v)) for n, v in zip(names, solution)}}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--target", help="compile the probes for this target (see gptjax.plan)")
  parser.add_argument("--out", help="JSON-lines file for the probe rows")
  parser.add_argument("--probes", help="comma-separated indices into PROBES (default: all)")
  parser.add_argument("--fit", nargs="+", metavar="ROWS", help="fit these probe files")
  args = parser.parse_args(argv)
  if args.target:
    done = []
    if os.path.exists(args.out):  # resume: keep the rows already compiled
      done = [(r["key"], r["probe"]) for r in map(json.loads, open(args.out)) if r]
    with open(args.out, "a") as out:
      probes = [PROBES[int(i)] for i in args.probes.split(",")] if args.probes else PROBES
      for row in probe_rows(args.target, probes, done):
        out.write(json.dumps(row) + "\n")
        out.flush()
  if args.fit:
    import jax
    rows = [json.loads(line) for path in args.fit for line in open(path) if line.strip()]
    model = dict(fit(rows))
    model["code"] = fit_code(rows)
    model["_about"] = (f"Multipliers of gptjax.params.activation_terms per platform/dtype/remat/"
                       f"dropout, fitted by tools/calibrate_memory.py on {datetime.date.today()} "
                       f"with jax {jax.__version__} from {len(rows)} compiled probes on " +
                       ", ".join(sorted({row['target'] for row in rows})) + ".")
    with open(MODEL_FILE, "w") as f:
      json.dump(model, f, indent=1, sort_keys=True)
    for key, value in sorted(model.items()):
      print(key, value)


if __name__ == "__main__":
  main()
