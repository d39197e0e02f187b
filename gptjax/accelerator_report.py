"""The accelerator check's report.json as markdown: what docs/accelerators/<device>.md holds."""

from __future__ import annotations

from gptjax.units import GiB


def markdown(result: dict) -> str:
  steps = result.get("steps", {})
  devices = steps.get("devices", {})
  kind = devices.get("device_kind", "unknown device")
  platform = result.get("platform", devices.get("platform", "?"))
  lines = [
      f"# gptjax accelerator check: {devices.get('device_count', '?')} x {kind} ({platform})", "",
      f"`{result.get('command', '')}`, started {result.get('started', '?')}, "
      f"{result.get('elapsed_s', 0):.0f} s of a {result.get('budget_s', '?')} s budget"
      f"{'; tiny models (--quick)' if result.get('quick') else ''}. Every figure under "
      f"'measured' ran on this machine; every 'planned' figure is an estimate made without the "
      f"hardware, by the cost model it names.", ""
  ]
  lines += _section("Devices and versions", devices, _devices)
  lines += _section("Is the accelerator used?", devices, _used)
  lines += _section("Training step: measured against the plan", steps.get("plan"), _plan)
  lines += _section("Sampling", steps.get("sampler"), _sampler)
  lines += _section(
      f"Fused attention against XLA's: {steps.get('loss', {}).get('steps', 5)} "
      f"steps' losses", steps.get("loss"), _losses)
  lines += _section("Profiler trace", steps.get("profile"), _profile)
  name = _file_name(kind)
  lines += [
      "## Where this report goes", "",
      f"A report of a real GPU or TPU belongs in gptjax's `docs/accelerators/{name}.md` "
      f"(this file as it is), with the measured figures quoted in docs/performance.md.", ""
  ]
  return "\n".join(lines)


def _file_name(kind: str) -> str:
  slug = "".join(c if c.isalnum() else "-" for c in kind.lower())
  return "-".join(filter(None, slug.split("-"))) or "unknown"


def _section(title: str, step: dict | None, body) -> list[str]:
  lines = [f"## {title}", ""]
  if not step:
    return lines + ["not run.", ""]
  if step.get("status") != "ok":
    return lines + [f"**{step.get('status', 'failed')}**: {step.get('error', '')}", ""]
  return lines + body(step) + [""]


def _devices(step: dict) -> list[str]:
  lines = ["| | |", "| --- | --- |"]
  lines += [f"| {name} | {version} |" for name, version in step.get("versions", {}).items()]
  lines += [
      f"| JAX platform | {step.get('platform')} ({step.get('device_count')} device(s), "
      f"{step.get('process_count')} process(es)) |",
      f"| device kind | {step.get('device_kind')} |",
      f"| accelerator hardware found | {step.get('hardware') or 'none'} |",
  ]
  for gpu in step.get("nvidia_smi") or []:
    lines.append("| nvidia-smi | " + ", ".join(f"{k} {v}" for k, v in gpu.items()) + " |")
  if step.get("accel_files"):
    lines.append(f"| /dev/accel* | {', '.join(step['accel_files'])} |")
  lines.append(f"| plan without the hardware as | {step.get('deviceless_target') or '-'} |")
  return lines


def _used(step: dict) -> list[str]:
  used = step.get("accelerator_used", {})
  return [f"**{'yes' if used.get('ok') else 'NO'}**: {used.get('verdict', '')}"]


def _ms(value) -> str:
  return "-" if value is None else f"{value:.1f}" if value >= 10 else f"{value:.3f}"


def _pct(value) -> str:
  return "-" if value is None else f"{100 * value:.1f}%"


def _gib(value) -> str:
  return "-" if value is None else f"{value / GiB:.2f}"


def _plan(step: dict) -> list[str]:
  target = step.get("target")
  planned = (f"`python -m gptjax.plan --target={target} --json`, compiled without the hardware"
             f"{' (--fast: per-layer extrapolation, exact on GPUs)' if 'gpu' in target else ''}"
             if target != "local" else "this machine's plan, made by the measuring run before it "
             "measured")
  lines = [
      f"Planned: {planned}. Measured: `python -m gptjax.plan --target=local --measure --json`, "
      f"the median of 10 steps here; memory: the allocator's peak bytes in use (on a CPU the "
      f"process's peak resident memory, Python and the compiler included).", "",
      "| preset | attention | dtype | planned ms/step | roofline ms | measured ms/step | "
      "measured / planned | MFU planned | MFU measured | planned GiB | peak GiB in use |",
      "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  ]
  notes = []
  for row in step.get("rows", []):
    head = f"| `{row['preset']}` | {row['attention']} | {row['dtype']} |"
    if row.get("note"):
      lines.append(f"{head} {row['note']} | | | | | | | |")
      continue
    planned, measured = row.get("planned") or {}, row.get("measured") or {}
    ratio = row.get("measured_over_planned")
    lines.append(f"{head} {_ms(planned.get('step_ms'))} | {_ms(planned.get('roofline_ms'))} | "
                 f"{_ms(measured.get('step_ms'))} | "
                 f"{'-' if ratio is None else f'{ratio:.2f}'} | {_pct(planned.get('mfu'))} | "
                 f"{_pct(measured.get('mfu'))} | {_gib(planned.get('total_bytes'))} | "
                 f"{_gib(measured.get('peak_bytes_in_use'))} |")
    for key in ("planned_error", "measured_error"):
      if row.get(key):
        notes.append(f"- `{row['preset']}` {row['attention']}, {key.split('_')[0]}: {row[key]}")
    if planned.get("step_source"):
      notes.append(f"- `{row['preset']}` {row['attention']}, planned step: "
                   f"{planned['step_source']} ({planned.get('method')})")
  return lines + ([""] + notes if notes else [])


def _sampler(step: dict) -> list[str]:
  return [
      f"`{step['preset']}` ({step['dtype']}, random weights), {step['prompt_tokens']} prompt "
      f"tokens, {step['new_tokens']} new: **{step['tokens_per_second']:.1f} tokens/s** "
      f"(prefill and decode {step['decode_s']:.2f} s, after {step['compile_s']:.1f} s of "
      f"compiling)."
  ]


def _losses(step: dict) -> list[str]:
  runs = step.get("runs", {})
  lines = [
      f"`{step['preset']}` ({', '.join(f'{k} {v}' for k, v in step['overrides'].items())}), the "
      f"same initial state and token batches for every path; tolerance {step['tolerance']:g}.", "",
      "| attention | losses | max abs. difference from XLA | within tolerance |",
      "| --- | --- | ---: | --- |"
  ]
  for path, run in runs.items():
    if not run.get("available", True):
      lines.append(f"| {path} | {run['note']} | | |")
    elif run.get("error"):
      lines.append(f"| {path} | failed: {run['error']} | | |")
    else:
      diff = run.get("max_abs_diff_vs_xla")
      lines.append(f"| {path} | {', '.join(f'{x:.5f}' for x in run['losses'])} | "
                   f"{'-' if diff is None else f'{diff:.2e}'} | "
                   f"{'-' if diff is None else ('yes' if run['within_tolerance'] else 'NO')} |")
  return lines


def _profile(step: dict) -> list[str]:
  return [
      f"`{step['preset']}`, {step['steps']} train steps traced in {step['traced_s']:.2f} s: "
      f"{len(step['files'])} file(s), {step['bytes'] / 2**20:.1f} MiB under `trace/` "
      f"({', '.join(step['files'][:4])}). View: {step['view']}."
  ]
