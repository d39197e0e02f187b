"""Benchmarks of the data path: tokenizing, batch assembly from memmapped shards, peak memory.

  python tools/bench_data.py                       # all three, as in the README
  python tools/bench_data.py --parts=tokenize --text_mb=200
  python tools/bench_data.py --parts=batches,memory --big_gb=2

tokenize: >= text_mb MB of text in files of 0.1-1 MB (tiny Shakespeare and the default corpus, cut
and repeated), tokenized with GPT-2 BPE (a) as nanoGPT's shakespeare/prepare.py does it: one
process, `enc.encode_ordinary(text)` on the whole text, then np.array(uint16); (b) tiktoken's own
threads, `encode_ordinary_batch` over the documents in one process; (c) gptjax.prepare with one
and with every core's worker processes, writing shards. Tokens are checked equal across them.
batches: train_batch from a big_gb GB synthetic shard set (np.memmap), for the small and 350M_1024
presets' batch shapes, with a warm and a cold page cache (our files evicted with posix_fadvise),
next to the train step as the planner estimates it for an H100 and a TPU v5e chip.
memory: peak resident memory (ru_maxrss) of `python -m gptjax.train` running 20 steps of tiny_char
on the big_gb GB shard set against a 20 MB one.
"""

from __future__ import annotations

import glob
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np
from absl import flags

from gptjax import files, presets
from gptjax.data import batches, dataset, shards
from gptjax.data import prepare as prepare_lib
from gptjax.data.tokenizer import ByteTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAKESPEARE = os.path.join(os.path.dirname(REPO), "shared", "data", "tinyshakespeare.txt")


def define_flags(values) -> None:
  flags.DEFINE_list("parts", ["tokenize", "batches", "memory"],
                    "Which benchmarks to run.",
                    flag_values=values)
  flags.DEFINE_integer("text_mb", 200, "MB of text to tokenize.", flag_values=values)
  flags.DEFINE_float("big_gb",
                     2.0,
                     "GB of synthetic token shards for the batch and memory runs.",
                     flag_values=values)
  flags.DEFINE_string("work_dir",
                      "/tmp/gptjax-bench-data",
                      "Scratch directory (removed after).",
                      flag_values=values)
  flags.DEFINE_integer("num_proc",
                       0,
                       "gptjax.prepare's worker processes; 0 = every core.",
                       flag_values=values)


def cpu_name() -> str:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next(
        line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
  except (OSError, StopIteration):
    return "unknown CPU"


def make_corpus(directory: str, megabytes: int) -> list[str]:
  """Files of 0.1-1 MB cut from tiny Shakespeare and the default corpus, until `megabytes` MB."""
  os.makedirs(directory, exist_ok=True)
  sources = [dataset.default_corpus_text()]
  if os.path.isfile(SHAKESPEARE):
    sources.append(open(SHAKESPEARE, encoding="utf-8").read())
  rng, written, paths = np.random.default_rng(0), 0, []
  while written < megabytes * 10**6:
    source = sources[len(paths) % len(sources)]
    size = int(rng.integers(100_000, 1_000_000))
    start = int(rng.integers(0, max(1, len(source) - size)))
    text = source[start:start + size]
    path = os.path.join(directory, f"doc{len(paths):05d}.txt")
    with open(path, "w", encoding="utf-8") as f:
      f.write(text)
    written += len(text.encode("utf-8"))
    paths.append(path)
  return paths


def cpu_seconds() -> float:
  """User + system CPU time of this process and its finished children."""
  return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                               resource.getrusage(resource.RUSAGE_CHILDREN)))


def bench_tokenize(work_dir: str, megabytes: int, num_proc: int) -> None:
  from gptjax.data.tokenizer import gpt2_encoding
  paths = make_corpus(os.path.join(work_dir, "text"), megabytes)
  total = sum(os.path.getsize(p) for p in paths)
  encoding = gpt2_encoding()
  eot = encoding.eot_token
  cores = prepare_lib.usable_cores()
  print(f"\ntokenizing {total / 1e6:.0f} MB in {len(paths)} files, GPT-2 BPE, {cores} cores "
        f"({cpu_name()}), load average before: {os.getloadavg()[0]:.2f}")

  cpu = cpu_seconds()
  start = time.perf_counter()  # (a) nanoGPT's shakespeare/prepare.py: one call on the whole text
  texts = [open(p, encoding="utf-8").read() for p in paths]
  ids = np.array(encoding.encode_ordinary("".join(texts)), dtype=np.uint16)
  one_s = time.perf_counter() - start
  cpus = [cpu_seconds() - cpu]
  del ids
  cpu = cpu_seconds()
  start = time.perf_counter()  # (b) tiktoken's threads over the documents
  texts = [open(p, encoding="utf-8").read() for p in paths]
  batch = encoding.encode_ordinary_batch(texts, num_threads=cores)
  threaded = np.concatenate([np.array(t + [eot], dtype=np.uint16) for t in batch])
  threads_s = time.perf_counter() - start
  cpus.append(cpu_seconds() - cpu)
  del batch, texts
  results = [("one process, encode_ordinary (nanoGPT)", one_s),
             (f"one process, encode_ordinary_batch ({cores} threads)", threads_s)]
  for procs in (1, num_proc or cores):
    out = os.path.join(work_dir, f"prepared-{procs}")
    cpu = cpu_seconds()
    start = time.perf_counter()
    meta = prepare_lib.prepare(
        prepare_lib.Options(inputs=[os.path.join(work_dir, "text")],
                            tokenizer="gpt2",
                            out_dir=out,
                            num_proc=procs,
                            val_fraction=0.01,
                            force=True,
                            progress=False))
    results.append((f"gptjax.prepare, {procs} worker process{'es' if procs > 1 else ''}",
                    time.perf_counter() - start))
    cpus.append(cpu_seconds() - cpu)
    tokens = meta["splits"]["train"]["tokens"] + meta["splits"]["val"]["tokens"]
    assert tokens == len(threaded), (tokens, len(threaded))
    shutil.rmtree(out)
  print(f"{'method':<52} {'s':>7} {'MB/s':>7} {'Mtok/s':>7} {'vs nanoGPT':>10} {'CPU s':>7} "
        f"{'CPU/wall':>8}")
  for (name, seconds), cpu in zip(results, cpus):
    print(f"{name:<52} {seconds:7.1f} {total / 1e6 / seconds:7.1f} "
          f"{len(threaded) / 1e6 / seconds:7.2f} {one_s / seconds:9.2f}x {cpu:7.1f} "
          f"{cpu / seconds:8.2f}")
  print(f"({len(threaded):,} tokens; load average after: {os.getloadavg()[0]:.2f})")


def synthetic_data_dir(directory: str, n_tokens: int, seed: int = 0) -> str:
  """A gptjax data directory of random byte-level tokens (ids 0-254, 255 every ~1000 as
  end-of-text), written in chunks: no need to tokenize gigabytes of text to read them."""
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(seed)
  splits = {}
  for split, count in (("train", n_tokens - n_tokens // 100), ("val", n_tokens // 100)):
    writer = shards.ShardWriter(directory, split, np.dtype(np.uint16), 100_000_000)
    for start in range(0, count, 1 << 25):
      chunk = rng.integers(0, 255, size=min(1 << 25, count - start), dtype=np.uint16)
      chunk[::1000] = 255
      writer.write(chunk)
    written = writer.close()
    splits[split] = dict(tokens=count, documents=count // 1000, shards=written)
  spec = ByteTokenizer().spec()
  files.write_json(
      os.path.join(directory, shards.META),
      dict(format=shards.FORMAT,
           version=shards.VERSION,
           tokenizer=spec,
           vocab_size=256,
           eot_id=255,
           dtype="uint16",
           splits=splits,
           skipped_empty_documents=0,
           val_fraction=0.01,
           seed=seed,
           source=dict(synthetic=True)))
  return directory


def evict(directory: str) -> None:
  """Drops our own files' pages from the page cache (no one else's)."""
  for path in glob.glob(os.path.join(directory, "*.bin")):
    with open(path, "rb") as f:
      os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def read_through(directory: str) -> None:
  """Reads our files once, so that their pages are in the page cache."""
  for path in glob.glob(os.path.join(directory, "*.bin")):
    with open(path, "rb") as f:
      while f.read(1 << 24):
        pass


def bench_batches(big_dir: str) -> None:
  config = presets.load("tiny_char")
  config.data_dir, config.input_file = big_dir, ""
  tokens = dataset.open_tokens(config).train
  print(f"\nbatch assembly from {len(tokens) * 2 / 1e9:.2f} GB of memmapped shards "
        f"({len(getattr(tokens, 'arrays', [tokens]))} files), {cpu_name()}")
  print(f"{'preset':<11} {'batch':>9} {'cache':>5} {'ms/batch':>9} {'tokens/s':>12}   train step")
  steps = {}
  for name in ("small", "350M_1024"):
    preset = presets.load(name)
    steps[name] = step_time(preset)
    shape = (preset.grad_accum_steps, preset.batch_size, preset.block_size)
    for cache in ("warm", "cold"):
      n = 200 if cache == "warm" else 50
      (evict if cache == "cold" else read_through)(big_dir)
      start = time.perf_counter()
      for step in range(n):
        batches.train_batch(tokens, 1337, step + (10**6 if cache == "cold" else 0), *shape)
      seconds = (time.perf_counter() - start) / n
      per_step = shape[0] * shape[1] * shape[2]
      print(f"{name:<11} {shape[1]:>4}x{shape[2]:<4} {cache:>5} {1000 * seconds:9.2f} "
            f"{per_step / seconds:12,.0f}   {steps[name]}")


def step_time(preset) -> str:
  """The train step's time as the planner estimates it where the preset would train (a CPU step
  of these presets takes tens of seconds: nothing to compare a batch with)."""
  from gptjax.planner import estimate, targets
  figures = []
  for target in ("gpu-h100-80gb", "tpu-v5e-1"):
    result = estimate.estimate(preset, targets.parse_target(target), method="analytic")
    if result.step_seconds:
      figures.append(f"{1000 * result.step_seconds:,.0f} ms on {target}")
  return (", ".join(figures) or "no estimate") + " (planner, analytic)"


def peak_rss_mb(data_dir: str) -> float:
  """Peak resident memory of a 20-step tiny_char run on `data_dir`, in MB."""
  command = [
      sys.executable, "-m", "gptjax.train", "--config=tiny_char", f"--config.data_dir={data_dir}",
      "--config.max_iters=20", "--config.eval_interval=20", "--config.eval_iters=20",
      f"--config.out_dir={data_dir}-run", "--config.model_name=memory"
  ]
  # Measured through /usr/bin/time in a small parent: a child's ru_maxrss starts from its
  # parent's resident size at fork, which would be this benchmark's own.
  result = subprocess.run(["/usr/bin/time", "-f", "maxrss_kb=%M", *command],
                          cwd=REPO,
                          capture_output=True,
                          text=True,
                          env={
                              **os.environ, "JAX_PLATFORMS": "cpu"
                          })
  shutil.rmtree(f"{data_dir}-run", ignore_errors=True)
  if result.returncode:
    raise SystemExit(f"training on {data_dir} failed:\n{result.stderr[-2000:]}")
  return int(result.stderr.rsplit("maxrss_kb=", 1)[1].split()[0]) / 1024


def bench_memory(big_dir: str, work_dir: str) -> None:
  small_dir = synthetic_data_dir(os.path.join(work_dir, "small"), 10_000_000)
  print(f"\npeak resident memory of `gptjax.train --config=tiny_char` for 20 steps "
        f"(ru_maxrss), {cpu_name()}")
  sizes = {}
  for directory in (small_dir, big_dir, small_dir, big_dir):  # each twice: the second warm
    sizes.setdefault(directory, []).append(peak_rss_mb(directory))
  for directory, peaks in sizes.items():
    gigabytes = sum(os.path.getsize(p) for p in glob.glob(os.path.join(directory, "*.bin"))) / 1e9
    print(f"  {gigabytes:7.2f} GB of shards: peak {' / '.join(f'{p:,.0f}' for p in peaks)} MB")
  small, big = (min(sizes[d]) for d in (small_dir, big_dir))
  print(f"  difference: {big - small:+,.0f} MB (goal: within 100 MB)")


def main(f) -> None:
  sys.stdout.reconfigure(line_buffering=True)
  os.makedirs(f.work_dir, exist_ok=True)
  try:
    if "tokenize" in f.parts:
      bench_tokenize(f.work_dir, f.text_mb, f.num_proc)
    if "batches" in f.parts or "memory" in f.parts:
      big = synthetic_data_dir(os.path.join(f.work_dir, "big"), int(f.big_gb * 1e9 / 2))
      if "batches" in f.parts:
        bench_batches(big)
      if "memory" in f.parts:
        bench_memory(big, f.work_dir)
  finally:
    shutil.rmtree(f.work_dir, ignore_errors=True)


if __name__ == "__main__":
  from gptjax import cli
  cli.run_command(main, define_flags, __doc__)
