"""What `python -m gptjax.plan` prints: the estimate and the search's ranking (the presets' memory
table is memory_table's).

Every figure names its source (XLA's compile for the target, or the analytic model), and
compile-only figures are estimates made without the hardware.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from gptjax.planner import estimate as estimate_lib
from gptjax.planner import targets
from gptjax.planner.estimate import Estimate
from gptjax.planner.search import REQUIRED_HEADROOM, Candidate, format_overrides
from gptjax.units import GiB, format_duration, gib

OPTIMIZER_NAMES = {"adamw": "AdamW", "muon": "Muon + AdamW"}


def format_estimate(result: Estimate, config: ml_collections.ConfigDict) -> str:
  """The planner's report: memory per device, speed, generation memory, and their sources."""
  target, memory, settings = result.target, result.memory, result.settings
  how = {
      estimate_lib.COMPILED: "compiled for this machine's devices",
      estimate_lib.DEVICELESS: f"compiled for {target.chip.name} without the hardware",
      estimate_lib.ANALYTIC: "analytic model (no compile)"
  }[result.method]
  if result.extrapolated_from_layers:
    how += (
        f", extrapolated per layer from {' and '.join(map(str, result.extrapolated_from_layers))}"
        f"-layer compiles")
  if result.compile_seconds:
    how += f", {result.compile_seconds:.1f} s"
  fit = (f"fits, {100 * result.headroom:.0f}% free"
         if result.fits else f"does NOT fit: {gib(memory.total - result.device_memory_bytes)} over")
  lines = [
      f"gptjax plan | {config.name} on {target.name}: {target.num_devices} x {target.chip.name}, "
      f"mesh " + " ".join(f"{k}={v}" for k, v in result.mesh.items()),
      f"  settings : batch {settings['batch_size']} x {settings['grad_accum_steps']} accumulation "
      f"x {config.block_size} tokens = {result.tokens_per_step:,} tokens/step, {settings['dtype']}, "
      f"remat {_remat(settings['remat'])}" +
      (f", loss in {settings['loss_chunk_tokens']}-token chunks"
       if settings.get("loss_chunk_tokens") else ""),
      f"  method   : {result.method} ({how})",
      "",
      "memory per device",
      *[
          f"  {label:<30}{value / GiB:>9.2f} GiB" for label, value in (
              ("parameters (float32)", memory.params),
              (f"optimizer state ({OPTIMIZER_NAMES[config.optimizer]})", memory.optimizer),
              ("gradients (float32)", memory.gradients),
              ("activations and temporaries", memory.activations),
              ("compiled program", memory.code), ("batch and other", memory.other))
      ],
      f"  {'total' + (' (at least)' if result.memory_is_lower_bound else ''):<30}"
      f"{memory.total / GiB:>9.2f} GiB of {gib(result.device_memory_bytes)}"
      f" ({target.chip.memory_note or 'device memory'}): {fit}",
      *([f"  {'measured peak':<30}{result.measured_peak_bytes / GiB:>9.2f} GiB"]
        if result.measured_peak_bytes else []),
      "",
      f"speed ({result.step_time_source or 'unknown'})",
      *speed_lines(result),
  ]
  gen = result.generation
  lines += [
      "", f"generation (gptjax.sample, {gen.batch} sample(s) to block_size {config.block_size},"
      f" one device)",
      f"  parameters {gib(gen.params)} + KV cache {gib(gen.kv_cache)} + prompt pass "
      f"{gib(gen.working)} = {gib(gen.total)}: " +
      ("fits" if gen.total <= result.device_memory_bytes else "does NOT fit")
  ]
  if result.notes:
    lines += ["", "notes", *[f"  - {note}" for note in result.notes]]
  return "\n".join(lines)


def speed_lines(result: Estimate) -> list[str]:
  """Step time, tokens/s and MFU; on GPUs the expected time beside the roofline, which is said to
  be a lower bound wherever it is shown."""
  if not result.step_seconds:
    return []
  peak = (f"of {result.target.num_devices} x {result.target.chip.peak_flops / 1e12:.0f} TFLOP/s "
          f"(bf16 peak)")
  if result.gpu_efficiency:
    roof = result.roofline_seconds
    lines = [
        f"  step time, expected: {result.step_seconds * 1000:.1f} ms",
        f"  step time, roofline: {roof * 1000:.1f} ms (a lower bound)",
        f"  tokens/s           : {result.tokens_per_second:,.0f} expected, "
        f"{result.tokens_per_step / roof:,.0f} at the roofline",
        f"  1000 iterations    : {format_duration(1000 * result.step_seconds)} expected"
    ]
    if result.mfu is not None:
      lines.append(f"  MFU                : {100 * result.mfu:.1f}% expected, "
                   f"{100 * result.mfu_roofline:.1f}% at the roofline (an upper bound), {peak}")
    return lines
  bound = " (a lower bound)" if result.step_time_is_lower_bound else ""
  lines = [
      f"  step time          : {result.step_seconds * 1000:.1f} ms{bound}",
      f"  tokens/s           : {result.tokens_per_second:,.0f}",
      f"  1000 iterations    : {format_duration(1000 * result.step_seconds)}"
  ]
  if result.roofline_seconds and not result.step_time_is_lower_bound:
    lines.insert(
        1, f"  roofline           : {result.roofline_seconds * 1000:.1f} ms (a lower bound: "
        f"{result.roofline_source})")
  if result.mfu is not None:
    lines.append(f"  MFU (estimated)    : {100 * result.mfu:.1f}% {peak}" +
                 (" (an upper bound)" if result.step_time_is_lower_bound else ""))
  return lines


def _remat(value) -> str:
  """A config's remat as the report names it: a policy, or on/off for a bool."""
  return {True: "on", False: "off"}[value] if isinstance(value, bool) else str(value)


def remat_suffix(value) -> str:
  """'+remat' for full remat, '+remat dots' for a policy, '' for none (the memory table)."""
  if value in (False, "none"):
    return ""
  return "+remat" if value in (True, "full") else f"+remat {value}"


def format_search(found: list[Candidate],
                  rejected: list[str],
                  config: ml_collections.ConfigDict,
                  command: str,
                  target: targets.Target,
                  given: Estimate | None = None) -> str:
  """The config as given, the winner as a command, the runners-up, and why the rest were left
  out."""
  head = [
      f"as given: {_summary(given)}: " +
      ("fits" if given.headroom >= REQUIRED_HEADROOM else "does NOT fit with "
       f"{100 * REQUIRED_HEADROOM:.0f}% free"), ""
  ] if given else []
  return "\n".join(head + _format_found(found, rejected, config, command, target))


def _format_found(found, rejected, config, command, target) -> list[str]:
  if not found:
    return [
        f"no configuration of {config.name} fits {target.name} with "
        f"{100 * REQUIRED_HEADROOM:.0f}% of memory free.", *[f"  - {line}" for line in rejected],
        "Fix: more devices (a larger --target) or a smaller model."
    ]
  best = found[0]
  lines = [
      f"fastest configuration that fits {target.name} with >= "
      f"{100 * REQUIRED_HEADROOM:.0f}% of memory free ({best.estimate.method}):", "",
      f"  {command} {format_overrides(best.estimate.settings, config)}".rstrip(), "",
      "  " + _summary(best.estimate)
  ]
  compiled = [c for c in found[1:] if c.estimate.method != estimate_lib.ANALYTIC]
  analytic = [c for c in found[1:] if c.estimate.method == estimate_lib.ANALYTIC]
  row = lambda c: (
      f"  {_summary(c.estimate)}  "  # noqa: E731
      f"{format_overrides(c.estimate.settings, config) or '(as given)'}")
  if compiled:
    lines += ["", "runners-up, compiled:", *map(row, compiled[:5])]
  if analytic:
    lines += [
        "", "also fitting by the analytic model, not compiled (analytic rooflines: compare "
        "them with each other, not with compiled figures):", *map(row, analytic[:5])
    ]
  lines += ["", "left out:", *[f"  - {line}" for line in rejected]] if rejected else []
  return lines


def _summary(result: Estimate) -> str:
  kind = (" expected"
          if result.gpu_efficiency else " (lower bound)" if result.step_time_is_lower_bound else "")
  time = ("time unknown"
          if not result.step_seconds else f"{result.step_seconds * 1000:8.1f} ms/step{kind}, "
          f"{result.tokens_per_second:>10,.0f} tok/s")
  if result.gpu_efficiency and result.roofline_seconds:
    time += f" (roofline {result.roofline_seconds * 1000:.1f} ms)"
  return (f"{result.memory.total / GiB:6.2f} GiB/device ({100 * result.headroom:3.0f}% free), "
          f"{time} [{result.method}]")


# --- Memory per preset and target (python -m gptjax.show_configs --memory) ------------------------


def fix_label(settings: dict[str, Any], config: ml_collections.ConfigDict) -> str:
  """A short name for the planner's changes: 'remat', 'bf16+remat', 'batch 4x2', 'fsdp 8'."""
  parts = []
  if settings["dtype"] != config.dtype:
    parts.append("bf16" if settings["dtype"] == "bfloat16" else settings["dtype"])
  if config.remat != "auto" and remat_suffix(settings["remat"]) != remat_suffix(config.remat):
    parts.append(remat_suffix(settings["remat"])[1:] or "no remat")
  if settings.get("loss_chunk_tokens", 0) != config.get("loss_chunk_tokens", 0):
    parts.append(f"loss in {settings['loss_chunk_tokens']}-token chunks"
                 if settings["loss_chunk_tokens"] else "plain loss")
  if (settings["batch_size"], settings["grad_accum_steps"]) != (config.batch_size,
                                                                config.grad_accum_steps):
    parts.append(f"batch {settings['batch_size']}x{settings['grad_accum_steps']}")
  parts += [
      f"{axis} {size}" for axis, size in settings["mesh"].items()
      if size != config.mesh[axis] and not (axis == "fsdp" and config.mesh.fsdp == -1)
  ]
  return "+".join(parts) or "as shipped"
