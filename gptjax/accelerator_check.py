"""The first run on a GPU or TPU: is it used, and are gptjax's plans and kernels right on it?

  python -m gptjax.accelerator_check --out_dir=accel_report     (or gptjax-accelerator-check)

In under 8 minutes on one GPU or TPU, with no network, it writes report.md and report.json under
--out_dir (replacing a report already there):
  - versions (jax, jaxlib, flax, the driver) and the devices JAX sees, against nvidia-smi or the
    TPU's /dev/accel*: that the GPU or TPU of this machine is the one used;
  - `gptjax.plan --measure` against the plan made without the hardware, for gpt2 and 350M_1024 in
    bfloat16 with each attention path of this platform: planned and measured ms/step, MFU, the
    planned memory against the allocator's peak bytes in use;
  - the sampler's tokens/s;
  - 5 training steps with each fused attention path against XLA's attention (their losses);
  - a profiler trace of a few steps (<out_dir>/trace).
Beside them: each step's log (logs/) and JAX's compilation cache (jax_cache/: a second run
compiles less).
Each step runs in a process of its own: one that fails is reported and the rest still run. On a
CPU (or with --quick) the models are tiny, and it all takes about a minute. Put a real device's
report.md in gptjax's docs/accelerators/ (docs/performance.md says how).
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time

from gptjax import cli
from gptjax.errors import UserError

STEP_NAMES = ("devices", "loss", "sampler", "profile", "plan")
# Seconds each step may take at most (a plan row: each of its two processes).
STEP_LIMITS = dict(devices=120, loss=240, sampler=150, profile=150, plan=300)


def main(f) -> None:
  from gptjax import devices
  with devices.quiet_plugins():  # importing JAX loads its plugins (no backend starts here)
    from gptjax import accelerator_steps as steps
  from gptjax import accelerator_report as report
  out_dir = os.path.abspath(f.out_dir or "")
  if not f.out_dir or os.path.isfile(out_dir):
    raise UserError(f"--out_dir={f.out_dir!r}: not a directory it can write its report into. "
                    f"Fix: --out_dir=accel_report (a new or existing directory).")
  if f.step:
    steps.run_worker(f.step, out_dir, bool(f.quick), steps.attention_paths(), f.new_tokens or
                     (32 if f.quick else 256))
    return
  try:
    os.makedirs(os.path.join(out_dir, "logs"), exist_ok=True)
  except OSError as e:
    raise UserError(f"--out_dir={f.out_dir!r}: cannot write there ({e.strerror}). Fix: a "
                    f"directory you can write, e.g. --out_dir=accel_report.") from e
  started = time.time()
  deadline = started + f.budget_s
  result = dict(command=" ".join(["python -m gptjax.accelerator_check", *sys.argv[1:]]),
                started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                budget_s=f.budget_s,
                attention_paths=steps.attention_paths(),
                steps={})

  def save() -> None:
    result["elapsed_s"] = time.time() - started
    steps.write_json(os.path.join(out_dir, "report.json"), result)
    with open(os.path.join(out_dir, "report.md"), "w", encoding="utf-8") as md:
      md.write(report.markdown(result))

  def worker(name: str, quick: bool) -> dict:
    tokens = f.new_tokens or (32 if quick else 256)
    args = [f"--step={name}", f"--out_dir={out_dir}", f"--new_tokens={tokens}"]
    return run_process(["-m", "gptjax.accelerator_check", *args, f"--quick={quick}"],
                       os.path.join(out_dir, "logs", f"{name}.log"),
                       min(STEP_LIMITS[name], deadline - time.time()),
                       json_file=os.path.join(out_dir, "steps", f"{name}.json"),
                       cache_dir=os.path.join(out_dir, "jax_cache"))

  runner = StepRunner(result, save, deadline)
  devices = runner.run("devices", "devices and versions", lambda: worker("devices", bool(f.quick)))
  platform = devices.get("platform", "cpu")
  quick = platform == "cpu" if f.quick is None else f.quick
  result.update(platform=platform, quick=quick)
  runner.run("loss", "fused attention against XLA: 5 steps' losses", lambda: worker("loss", quick))
  runner.run("sampler", "the sampler's tokens/s", lambda: worker("sampler", quick))
  runner.run("profile", "a profiler trace", lambda: worker("profile", quick))
  runner.run("plan", "plan --measure against the plan without the hardware",
             lambda: plan_rows(devices, quick, out_dir, deadline, steps))
  save()
  failed = [name for name, step in result["steps"].items() if step["status"] == "failed"]
  print(f"report: {os.path.join(out_dir, 'report.md')} ({len(result['steps']) - len(failed)} of "
        f"{len(result['steps'])} steps ok{': failed ' + ', '.join(failed) if failed else ''}, "
        f"{time.time() - started:.0f} s)")
  sys.exit(1 if failed else 0)


class StepRunner:
  """Runs the check's steps one after the other: each one's failure is recorded (with its error)
  and the next still runs; progress on stderr; the report saved after every step."""

  def __init__(self, result: dict, save, deadline: float):
    self.result, self.save, self.deadline = result, save, deadline

  def run(self, name: str, title: str, fn) -> dict:
    number = len(self.result["steps"]) + 1
    print(f"[{number}/{len(STEP_NAMES)}] {title} ...", file=sys.stderr, flush=True)
    start = time.time()
    if self.deadline - start < 10:
      entry = dict(status="skipped", error="the time budget (--budget_s) ran out")
    else:
      try:
        entry = dict(status="ok", **fn())
      except Exception as e:  # reported; the next step still runs
        entry = dict(status="failed", error=f"{type(e).__name__}: {e}"[:2000])
    entry["seconds"] = time.time() - start
    self.result["steps"][name] = entry
    print(
        f"[{number}/{len(STEP_NAMES)}] {title}: {entry['status']} ({entry['seconds']:.1f} s)"
        f"{': ' + entry['error'].splitlines()[0] if entry.get('error') else ''}",
        file=sys.stderr,
        flush=True)
    self.save()
    return entry


class StepFailed(Exception):
  """A step's process failed: its last lines of output say why."""


def run_process(args: list[str],
                log_path: str,
                timeout: float,
                json_file: str | None = None,
                cache_dir: str | None = None):
  """Runs `python <args>` with its output in `log_path`; returns the JSON it wrote to `json_file`
  (or printed, when None). Raises StepFailed with the end of its output when it fails.

  cache_dir: JAX's persistent compilation cache for it (unless $JAX_COMPILATION_CACHE_DIR is set):
    `plan --measure` compiles its step twice (to plan, then to run), the second time from there.
  """
  env = dict(os.environ)
  if cache_dir:
    env.setdefault("JAX_COMPILATION_CACHE_DIR", cache_dir)
  if timeout < 5:
    raise StepFailed("the time budget (--budget_s) ran out")
  if json_file and os.path.exists(json_file):
    os.remove(json_file)
  with open(log_path, "w", encoding="utf-8") as log:
    try:
      done = subprocess.run([sys.executable, *args],
                            stdout=subprocess.PIPE,
                            stderr=log,
                            text=True,
                            timeout=timeout,
                            env=env)
    except subprocess.TimeoutExpired as e:
      raise StepFailed(f"timed out after {timeout:.0f} s (log: {log_path})") from e
  if done.returncode != 0 or (json_file and not os.path.exists(json_file)):
    with open(log_path, encoding="utf-8", errors="replace") as log:
      tail = [line.rstrip() for line in log.readlines()[-6:] if line.strip()]
    raise StepFailed(f"exit status {done.returncode}: " + " | ".join(tail)[-1500:] +
                     f" (log: {log_path})")
  if json_file:
    with open(json_file, encoding="utf-8") as f:
      return json.load(f)
  return json.loads(done.stdout)


def plan_rows(devices: dict, quick: bool, out_dir: str, deadline: float, steps) -> dict:
  """Per preset and attention path: the plan without the hardware (on a CPU: this machine's
  plan), then `plan --target=local --measure` (the step run here)."""
  platform = devices.get("platform", "cpu")
  target = devices.get("deviceless_target") or "local"
  presets = [steps.QUICK_PRESET] if quick else list(steps.PLAN_PRESETS)
  dtype = "float32" if quick and platform == "cpu" else "bfloat16"
  rows = []
  for preset in presets:
    for path in steps.attention_paths():
      row = dict(preset=preset, attention=path, dtype=dtype)
      rows.append(row)
      if not steps.available_on(path, platform):
        row["note"] = f"not available on {platform}"
        continue
      flags = steps.override_flags(preset, quick, dtype=dtype, attention=path)
      name = f"{preset}_{path}".replace("/", "_")
      planned = None
      if target != "local":  # on a CPU the measuring run plans first: its plan is this one
        try:
          planned = run_process(["-m", "gptjax.plan", *flags, f"--target={target}", "--json"] +
                                (["--fast"] if platform == "gpu" else []),
                                os.path.join(out_dir, "logs", f"plan_{name}.log"),
                                min(STEP_LIMITS["plan"], deadline - time.time()))
        except StepFailed as e:
          row["planned_error"] = str(e)
      try:
        measured = run_process(
            ["-m", "gptjax.plan", *flags, "--target=local", "--measure", "--json"],
            os.path.join(out_dir, "logs", f"measure_{name}.log"),
            min(STEP_LIMITS["plan"], deadline - time.time()),
            cache_dir=os.path.join(out_dir, "jax_cache"))
      except StepFailed as e:
        measured, row["measured_error"] = None, str(e)
      if target == "local" and measured:
        planned = steps.plan_before_measuring(measured)
      row.update(steps.plan_row(planned, measured))
      print(f"  {preset}, attention {path}: " + _row_summary(row), file=sys.stderr, flush=True)
  return dict(target=target, rows=rows)


def _row_summary(row: dict) -> str:
  planned, measured = row.get("planned"), row.get("measured")
  parts = [
      f"planned {planned['step_ms']:.1f} ms" if planned and planned["step_ms"] else
      "plan failed" if row.get("planned_error") else "no plan"
  ]
  parts.append(f"measured {measured['step_ms']:.1f} ms" if measured else "measure failed")
  return ", ".join(parts)


def define_flags(values) -> None:
  from absl import flags
  flags.DEFINE_string("out_dir",
                      None,
                      "Directory for report.md, report.json, the trace and logs.",
                      flag_values=values)
  flags.DEFINE_bool("quick",
                    None,
                    "Tiny models, seconds a step (default: on a CPU only).",
                    flag_values=values)
  flags.DEFINE_integer("budget_s",
                       450,
                       "Seconds the whole check may take; steps that no longer fit are skipped.",
                       flag_values=values)
  flags.DEFINE_integer("new_tokens",
                       None,
                       "Tokens the sampler draws (default: 256, with --quick 32).",
                       flag_values=values)
  flags.DEFINE_enum("step",
                    None, ["devices", "sampler", "loss", "profile"],
                    "Run one step alone in this process (what the check runs each step as).",
                    flag_values=values)


def cli_main(argv: list[str] | None = None) -> None:
  """`python -m gptjax.accelerator_check` and the gptjax-accelerator-check console script."""
  # The check itself starts no JAX backend: its steps' processes use the device, one at a time (a
  # TPU is held by one process).
  given = sys.argv if argv is None else argv
  cli.run_command(main,
                  define_flags,
                  __doc__,
                  uses_jax=any(arg.startswith("--step") for arg in given[1:]),
                  argv=argv)


if __name__ == "__main__":
  cli_main()
