"""Calibrates the planner's expected GPU time: the share of its per-kernel roofline real runs reach.

  python tools/calibrate_gpu.py                           # the published runs (compile-only)
  python tools/calibrate_gpu.py --measured plan.json ...  # and measurements of gptjax itself

For each published run of GPT-2 124M (PUBLISHED: the model, tokens per step and card of a real
run, and its measured seconds per step) it compiles the equivalent gptjax step for that card
without a GPU (`gptjax.planner.estimate`, cuDNN's attention priced from its shapes), reads the
planner's roofline, and divides it by the measured time: the run's efficiency. Their mean is the
efficiency `python -m gptjax.plan` divides its GPU rooflines by (gptjax/planner/gpu_calibration.json).

A measurement of gptjax itself on a GPU recalibrates it: run there
`python -m gptjax.plan --config=<preset> --target=local --measure --json > plan.json` (its
`roofline_seconds` is the planner's roofline of the program compiled there, its `step_seconds`
the measured median), and pass the files with --measured: each becomes a run, and with any
measured run present the efficiency is the mean of the measured runs alone.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_FILE = os.path.join(REPO_ROOT, "gptjax", "planner", "gpu_calibration.json")
GPT2_124M = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304, dropout=0.0)
PUBLISHED = (
    dict(name="nanoGPT GPT-2 124M (PyTorch 2, torch.compile, flash attention)",
         source="github.com/karpathy/nanoGPT README: torch.compile cuts 'iteration time from "
         "~250ms / iter to 135ms / iter'; bench.py's iteration: batch 12 x 1024, bfloat16, "
         "AdamW; the card an A100 (PERF-NOTES' reading)",
         target="gpu-a100-40gb",
         measured_seconds=0.135,
         config=dict(GPT2_124M, bias=False, batch_size=12, grad_accum_steps=1),
         fused_classifier=False),
    dict(name="llm.c GPT-2 124M (CUDA, cuDNN flash attention, fused classifier)",
         source="github.com/karpathy/llm.c GPT-2 (124M) reproduction on 8 x H100: ~140 ms per "
         "step of 64 x 1024 tokens per GPU, bfloat16 (PERF-NOTES' reading)",
         target="gpu-h100-80gb",
         measured_seconds=0.140,
         config=dict(GPT2_124M, bias=True, batch_size=64, grad_accum_steps=1),
         fused_classifier=True),
)


def published_row(run: dict) -> dict:
  """The run with the planner's roofline of its equivalent gptjax step (compile-only): cuDNN's
  attention priced in place of XLA's, as the planner does; and where the run's program has a fused
  classifier (llm.c: one kernel reads the bfloat16 logits and writes their gradient in place), the
  step's other kernels over the (N, V) logits (float32 copies, softmax, its gradient) priced as
  that kernel, so that the roofline is that of the run's program."""
  from gptjax import sharding
  from gptjax.config import get_base_config
  from gptjax.planner import compiled, kernels, options, roofline, targets
  config = get_base_config()
  config.update(dict(run["config"], dtype="bfloat16", remat=False, attention="xla"))
  config.mesh.update(dict(data=1, fsdp=-1, tensor=1))
  target = targets.parse_target(run["target"])
  devices = targets.devices(target)
  mesh = sharding.make_mesh(config, devices=devices)
  _, lowered = compiled.lower_train_step(config, mesh)
  program = lowered.compile()
  step = options.step_options(compiled.with_fields(config, attention="cudnn"), target.platform)
  fused = compiled.fused_attention(config, (1, 1, 1), step)
  device = roofline.device_of(target.chip)
  tokens, vocab = config.batch_size * config.block_size, config.vocab_size
  marks = {
      "attention":
          lambda i, m: kernels.holds_array(i, m, fused.is_scores),
      "classifier":
          lambda i, m: i.opcode != "custom-call" and not kernels.hlo.matmul_flops(
              [i], m) and kernels.holds_array(
                  i, m, lambda d: d and d[-1] == vocab and math.prod(d) >= tokens * vocab)
  }
  walked = kernels.walk(program.as_text(), device, marks)
  seconds = (walked.total - walked.marked["attention"] + fused.cost(device)).seconds
  classifier = walked.marked["classifier"].seconds
  if run["fused_classifier"]:
    seconds += device.seconds(0, 2 * tokens * vocab * 2) + device.launch_seconds - classifier
  memory = program.memory_analysis()
  planned = (memory.argument_size_in_bytes + memory.temp_size_in_bytes +
             memory.output_size_in_bytes - memory.alias_size_in_bytes)
  return _row(run,
              seconds,
              tokens,
              planned,
              target.device_memory_bytes,
              classifier_seconds=classifier)


def measured_row(path: str) -> dict:
  """A `plan --target=local --measure --json` of gptjax on a GPU, as a run."""
  plan = json.load(open(path))
  if "measured" not in plan["step_time_source"]:
    raise SystemExit(f"{path}: not a --measure run ({plan['step_time_source']})")
  run = dict(name=f"gptjax {plan['settings']} on {plan['device_kind']}",
             source=f"python -m gptjax.plan --target=local --measure ({os.path.basename(path)})",
             target=plan["device_kind"],
             measured_seconds=plan["step_seconds"],
             measured=True,
             config=plan["settings"])
  return _row(run, plan["roofline_seconds"], plan["tokens_per_step"],
              plan["total_bytes_per_device"], plan["device_memory_bytes"])


def _row(run: dict, roofline_seconds: float, tokens: int, planned_bytes: int, device_bytes: int,
         **more) -> dict:
  return dict(run,
              **more,
              tokens_per_step=tokens,
              roofline_seconds=roofline_seconds,
              efficiency=roofline_seconds / run["measured_seconds"],
              planned_gib=planned_bytes / 2**30,
              device_gib=device_bytes / 2**30)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--measured", nargs="*", default=[], help="plan --measure --json files")
  parser.add_argument("--dry_run", action="store_true", help="print, do not write the file")
  args = parser.parse_args(argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, REPO_ROOT)
  import jax
  rows = [published_row(run) for run in PUBLISHED] + [measured_row(p) for p in args.measured]
  measured = [row for row in rows if row.get("measured")]
  efficiency = statistics.mean(row["efficiency"] for row in (measured or rows))
  calibration = dict(
      _about=(f"The share of gptjax's per-kernel GPU roofline that real runs reach: the mean over "
              f"{'measured runs of gptjax' if measured else 'published runs of GPT-2 124M'}, each "
              f"against the roofline of the equivalent gptjax step compiled without a GPU. "
              f"Written by tools/calibrate_gpu.py on {datetime.date.today()} with jax "
              f"{jax.__version__}."),
      efficiency=round(efficiency, 3),
      runs=rows)
  for row in rows:
    print(f"{row['name']} on {row['target']}: measured {1000 * row['measured_seconds']:.1f} ms, "
          f"roofline {1000 * row['roofline_seconds']:.1f} ms (the plain loss's kernels over the "
          f"logits {1000 * row.get('classifier_seconds', 0):.1f} ms), efficiency "
          f"{row['efficiency']:.3f} "
          f"(planned {row['planned_gib']:.1f} of {row['device_gib']:.1f} GiB)")
  print(f"efficiency {efficiency:.3f}")
  if not args.dry_run:
    with open(OUT_FILE, "w") as f:
      json.dump(calibration, f, indent=1)
      f.write("\n")


if __name__ == "__main__":
  main()
