"""A reliability campaign against gptjax's trainer, as a demanding user would run one: kill -9 at
random moments, damaged checkpoints, bad inputs. Prints what survived, as figures.

  python tools/reliability.py                      # 10 kills, 12 corruptions, every bad input
  python tools/reliability.py --kills=40 --corruptions=30 --seed=1

Every run is a small byte-level model (1 layer, 30 steps, a checkpoint every 3 steps, dropout on)
on the default corpus, in a temporary directory.

- kill -9: a run is killed at a random moment (often inside an asynchronous save), then the same
  command is run again. Survived: it finishes, each step is logged once, and its losses equal an
  uninterrupted run's bitwise.
- corruption: one file of a finished run's latest checkpoint is truncated, overwritten with
  random bytes at its start, or deleted; then the run is resumed for 3 more steps. Recovered: it
  finishes with no traceback, past the damaged step (with a note) or, when the damage did not
  touch what a restore reads, from it.
- bad input: each command is a user mistake. Clear: exit 2, one `error:` line, no traceback, and
  the run directory left as it was.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 30
TRAIN = ("-m", "gptjax.train", "--config=tiny_char", "--config.n_layer=1", "--config.eval_iters=1",
         "--config.log_interval=1", "--config.checkpoint_interval=3", "--config.eval_interval=10",
         "--config.dropout=0.1")


def python(*args, timeout=600, **kwargs) -> subprocess.CompletedProcess:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", **kwargs.pop("env", {})}
  return subprocess.run([sys.executable, *args],
                        cwd=REPO,
                        capture_output=True,
                        text=True,
                        timeout=timeout,
                        env=env,
                        **kwargs)


def records(run_dir: str) -> list[dict]:
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def losses(run_dir: str) -> list[tuple]:
  return [(r["step"], r["train_loss"], r["grad_norm"], r.get("val_loss")) for r in records(run_dir)]


def kill_trial(root: str, name: str, rng: random.Random,
               reference: list[tuple]) -> tuple[bool, str]:
  command = [
      *TRAIN, f"--config.max_iters={STEPS}", f"--config.out_dir={root}",
      f"--config.model_name={name}"
  ]
  at_step, delay = rng.randint(2, STEPS - 2), rng.uniform(0, 0.3)
  process = subprocess.Popen([sys.executable, *command],
                             cwd=REPO,
                             stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL,
                             text=True,
                             env={
                                 **os.environ, "JAX_PLATFORMS": "cpu",
                                 "PYTHONUNBUFFERED": "1"
                             })
  for line in process.stdout:
    if line.startswith(f"step {at_step}:"):
      time.sleep(delay)
      process.send_signal(signal.SIGKILL)
      break
  process.wait(timeout=120)
  resumed = python(*command)
  where = f"killed after step {at_step} + {delay:.2f} s"
  if resumed.returncode != 0 or "Traceback" in resumed.stderr:
    return False, f"{where}: resume exited {resumed.returncode}: {resumed.stderr[-300:]}"
  got = losses(os.path.join(root, name))
  if got != reference:
    return False, f"{where}: records differ from the uninterrupted run's"
  return True, where


def corrupt(step_dir: str, rng: random.Random) -> str:
  files = sorted(
      os.path.join(d, f)
      for d, _, fs in os.walk(step_dir)
      for f in fs
      if os.path.getsize(os.path.join(d, f)) > 0)
  path, how = rng.choice(files), rng.choice(("truncated", "overwritten", "deleted"))
  size = os.path.getsize(path)
  if how == "truncated":
    os.truncate(path, rng.randint(0, size - 1))
  elif how == "overwritten":
    with open(path, "r+b") as f:
      f.write(rng.randbytes(min(size, 64)))
  else:
    os.remove(path)
  return f"{os.path.relpath(path, step_dir)} {how}"


def corruption_trial(root: str, finished: str, name: str, rng: random.Random,
                     reference: list[tuple]) -> tuple[bool, str]:
  run_dir = os.path.join(root, name)
  shutil.copytree(finished, run_dir)
  what = corrupt(os.path.join(run_dir, "checkpoints", str(STEPS)), rng)
  resumed = python(*TRAIN, f"--config.max_iters={STEPS + 3}", f"--config.out_dir={root}",
                   f"--config.model_name={name}")
  if resumed.returncode != 0 or "Traceback" in resumed.stderr:
    return False, f"{what}: exited {resumed.returncode}: {resumed.stderr.strip()[-300:]}"
  # Past a skipped step the run recomputes it; from a step it restored, the weights must be whole:
  # either way every record equals the undamaged run's, resumed the same way.
  if losses(run_dir) != reference:
    return False, f"{what}: records differ from the undamaged run's"
  skipped = "is damaged" in resumed.stderr
  return True, f"{what}: " + ("skipped with a note" if skipped else "restored from it, intact")


def bad_inputs(root: str) -> list[tuple[str, list[str]]]:
  """(what, arguments) for each user mistake, after `python -m gptjax.train`."""
  text_dir = os.path.join(root, "a_directory")
  os.makedirs(text_dir, exist_ok=True)
  binary = os.path.join(root, "binary.bin")
  with open(binary, "wb") as f:
    f.write(bytes(range(256)) * 4)
  empty = os.path.join(root, "empty.txt")
  open(empty, "w").close()
  preset = "--config=tiny_char"
  return [
      ("no --config", []),
      ("missing preset", ["--config=nope"]),
      ("preset as a plain argument", ["configs/tiny_char.py"]),
      ("nanoGPT's --config_file", ["--config_file=configs/tiny_char.py"]),
      ("nanoGPT-style --max_iters", [preset, "--max_iters=10"]),
      ("misspelt field", [preset, "--config.n_layr=3"]),
      ("misspelt nested field", [preset, "--config.mesh.fsdpp=2"]),
      ("misspelt flag", [preset, "--confg.n_layer=2"]),
      ("heads do not divide n_embd", [preset, "--config.n_embd=100", "--config.n_head=3"]),
      ("negative seed", [preset, "--config.seed=-1"]),
      ("text for an integer", [preset, "--config.max_iters=abc"]),
      ("text for a boolean", [preset, "--config.remat=maybe"]),
      ("zero batch", [preset, "--config.batch_size=0"]),
      ("zero layers", [preset, "--config.n_layer=0"]),
      ("dropout above 1", [preset, "--config.dropout=1.5"]),
      ("negative learning rate", [preset, "--config.learning_rate=-1"]),
      ("unknown dtype", [preset, "--config.dtype=float8"]),
      ("unknown tokenizer", [preset, "--config.tokenizer=wordpiece"]),
      ("vocab too small for GPT-2",
       ["--config=tiny", "--config.tokenizer=gpt2", "--config.vocab_size=1000"]),
      ("missing tiktoken file", ["--config=tiny", "--config.tokenizer_path=/no/x"]),
      ("missing input file", [preset, "--config.input_file=/no/such.txt"]),
      ("directory as input file", [preset, f"--config.input_file={text_dir}"]),
      ("empty input file", [preset, f"--config.input_file={empty}"]),
      ("block larger than the corpus",
       [preset, f"--config.input_file={binary}", "--config.block_size=4096"]),
      ("out_dir under a file", [preset, "--config.out_dir=/etc/passwd/x"]),
      ("mesh larger than the devices", [preset, "--config.mesh.fsdp=3"]),
      ("batch not divisible by the mesh",
       [preset, "--config.cpu_devices=2", "--config.mesh.data=2", "--config.batch_size=3"]),
      ("missing init_from directory", [preset, "--config.init_from=/no/gpt2"]),
      ("init_from a file", [preset, f"--config.init_from={binary}"]),
      ("device memory too small", [preset], {
          "GPTJAX_DEVICE_MEMORY_GB": "0.001"
      }),
      ("preset whose get_config raises", ["--config=tests/data/raising_preset.py"]),
      ("preset returning no ConfigDict", ["--config=tests/data/not_a_configdict_preset.py"]),
  ]


def tree_state(directory: str) -> dict[str, float]:
  return {
      os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime for d, _, fs in os.walk(directory)
      for f in fs
  }


def bad_input_trial(root: str, what: str, args: list[str], env=None) -> tuple[bool, str]:
  # Into a run directory of its own (one trained with other settings would refuse every trial
  # before its own check), beside the finished run, which must stay as it was.
  if not any(a.startswith("--config.out_dir=") for a in args) and any(
      a.startswith("--config=") for a in args):
    args = [*args, f"--config.out_dir={root}", "--config.model_name=bad_input"]
  before = tree_state(os.path.join(root, "finished"))
  result = python("-m", "gptjax.train", *args, env=env or {})
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  clear = (result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr and
           tree_state(os.path.join(root, "finished")) == before and
           not os.path.exists(os.path.join(root, "bad_input")))
  return clear, (errors[0][:160]
                 if errors else f"exit {result.returncode}: {result.stderr.strip()[-200:]}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--kills", type=int, default=10)
  parser.add_argument("--corruptions", type=int, default=12)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--keep", action="store_true", help="keep the temporary run directories")
  args = parser.parse_args()
  rng = random.Random(args.seed)
  root = tempfile.mkdtemp(prefix="gptjax-reliability-")
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(root, "jax-cache"))
  print(f"reliability campaign in {root} (seed {args.seed})", flush=True)
  reference = python(*TRAIN, f"--config.max_iters={STEPS}", f"--config.out_dir={root}",
                     "--config.model_name=finished")
  if reference.returncode != 0:
    sys.exit(f"the uninterrupted run failed:\n{reference.stderr[-2000:]}")
  expected = losses(os.path.join(root, "finished"))
  shutil.copytree(os.path.join(root, "finished"), os.path.join(root, "resumed"))
  resumed = python(*TRAIN, f"--config.max_iters={STEPS + 3}", f"--config.out_dir={root}",
                   "--config.model_name=resumed")
  if resumed.returncode != 0:
    sys.exit(f"the undamaged resume failed:\n{resumed.stderr[-2000:]}")
  expected_resumed = losses(os.path.join(root, "resumed"))
  results = {}
  for kind, trials in (("kill -9", [
      lambda i=i: kill_trial(root, f"kill{i}", rng, expected) for i in range(args.kills)
  ]), ("corruption", [
      lambda i=i: corruption_trial(root, os.path.join(root, "finished"), f"corrupt{i}", rng,
                                   expected_resumed) for i in range(args.corruptions)
  ]), ("bad input",
       [lambda case=case: bad_input_trial(root, case[0], *case[1:]) for case in bad_inputs(root)])):
    results[kind] = []
    for trial in trials:
      ok, detail = trial()
      results[kind].append(ok)
      print(f"  {kind:11s} {'ok  ' if ok else 'FAIL'} {detail}", flush=True)
  print("\nsummary:")
  for kind, outcomes, word in (("kill -9", results["kill -9"], "survived, bitwise"),
                               ("corruption", results["corruption"], "recovered"),
                               ("bad input", results["bad input"], "one clear error")):
    print(f"  {kind:11s} {sum(outcomes)}/{len(outcomes)} {word}")
  if not args.keep:
    shutil.rmtree(root, ignore_errors=True)
  sys.exit(0 if all(all(v) for v in results.values()) else 1)


if __name__ == "__main__":
  main()
