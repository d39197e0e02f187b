"""Text -> token shards, once, on every core: the library half of `python -m gptjax.prepare`.

Inputs: text files (one document each), globs, directories, JSON-lines files (one document a line)
and, with the `datasets` package and network, a Hugging Face dataset, streamed. Tokenizers: bytes,
gpt2 (tiktoken) or a Hugging Face tokenizer.json. Output: <out_dir>/train-NNNNN.bin and
val-NNNNN.bin (uint16, or uint32 for vocabularies over 65,536), every document followed by the
end-of-text id, and meta.json (gptjax/data/shards.py). Validation: gptjax/data/sources.py's rule.
Worker processes tokenize tasks of a few MB each while the main process writes them in order, so
memory stays bounded whatever the corpus size. Everything is written under <out_dir>/.prepare-partial
and moved into place, meta.json last, when complete: a killed prepare leaves no meta.json, which
training refuses, and running the command again starts over. Run again unchanged, it does nothing.
A prepare that fails or is interrupted leaves nothing behind, not even the out_dir it made.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import itertools
import json
import os
import shutil
import socket
import sys

import numpy as np
from tqdm import tqdm

from gptjax import files
from gptjax.data import encode, shards, sources
from gptjax.data.encode import usable_cores  # noqa: F401 (tools/bench_data.py)
from gptjax.data import tokenizer as tokenizer_lib
from gptjax.errors import DataError, UserError, disk_full_as_error

# Below this many bytes of input, tokenizing in this process is faster than starting workers.
MIN_PARALLEL_BYTES = 16 << 20


@dataclasses.dataclass
class Options:
  """What to prepare; the fields are the command's flags (see define_flags)."""
  inputs: list[str]
  tokenizer: str
  out_dir: str
  text_field: str = "text"
  hf_dataset: str = ""
  hf_config: str = ""
  hf_split: str = "train"
  val_fraction: float = sources.VAL_FRACTION
  seed: int = 2357
  num_proc: int = 0
  shard_tokens: int = 100_000_000
  task_bytes: int = 4 << 20
  tokenizer_path: str = ""
  eot_token: str = "auto"
  texts: tuple[str,
               ...] | None = None  # in-memory documents (the default corpus), for data/dataset.py
  force: bool = False
  progress: bool | None = None  # None: a bar when stderr is a terminal


# Text on which a tokenizer's bytes per token are measured for a streamed dataset's validation cap.
_ENGLISH = ("The validation split holds whole documents, drawn with the seed, until it is large "
            "enough to measure the loss well; a single document gives its last tenth instead. ")


def _bytes_per_token(tokenizer, sample: str) -> float:
  """UTF-8 bytes per token of `sample`: converts the validation cap from tokens into bytes."""
  sample = sample or _ENGLISH
  return max(1.0, len(sample.encode("utf-8")) / max(1, len(tokenizer.encode(sample))))


def _head(path: str, size: int = 1 << 16) -> str:
  with open(path, "rb") as f:
    return f.read(size).decode("utf-8", errors="ignore")


def _plan(options: Options, tokenizer):
  """(tasks, total input bytes or None, description of the source, stat key parts, ValSplit)."""

  def split_of(sizes, sample: str):
    max_bytes = sources.VAL_MAX_TOKENS * _bytes_per_token(tokenizer, sample)
    return sources.ValSplit(sizes, options.val_fraction, options.seed, max_bytes)

  if options.texts is not None:
    texts = list(options.texts)
    split = split_of([len(t.encode("utf-8")) for t in texts], texts[0][:1 << 16] if texts else "")
    key = hashlib.sha256("\0".join(texts).encode()).hexdigest()
    return (sources.text_tasks(texts, 0, split, options.task_bytes), sum(len(t) for t in texts),
            "text", [key], split)
  if options.hf_dataset:
    split = split_of(None, "")
    texts = sources.hf_texts(options.hf_dataset, options.hf_config, options.hf_split,
                             options.text_field)
    key = [options.hf_dataset, options.hf_config, options.hf_split, options.text_field]
    return sources.text_tasks(texts, 0, split, options.task_bytes), None, "hf", key, split
  paths = sources.expand_inputs(options.inputs)
  jsonl = [path for path in paths if sources.is_jsonl(path)]
  text_files = [path for path in paths if not sources.is_jsonl(path)]
  lines = [sources.line_sizes(path) for path in jsonl]
  sizes = np.concatenate([np.asarray([os.path.getsize(p) for p in text_files], np.int64)] + lines)
  split = split_of(sizes, next((_head(path) for path in paths if os.path.getsize(path)), ""))
  stats = [(os.path.abspath(p), os.path.getsize(p), os.stat(p).st_mtime_ns) for p in paths]
  described = f"{len(paths)} files"
  if split.tail_doc is not None and split.tail_doc >= len(text_files):  # one JSON line
    line = split.tail_doc - len(text_files)
    path = next(p for p, n in zip(jsonl, itertools.accumulate(map(len, lines))) if line < n)
    piece = ("jsonl", path, 0, os.path.getsize(path), 0, ())
    text = next(text for _, text, _ in encode.jsonl_documents(piece, options.text_field) if text)
    split = split_of([len(text.encode("utf-8"))], text[:1 << 16])
    return (sources.text_tasks([text], 0, split, options.task_bytes), sum(s[1] for s in stats),
            described, stats, split)

  def tasks():
    yield from sources.text_file_tasks(text_files, 0, split, options.task_bytes)
    first = len(text_files)
    for path, count in zip(jsonl, map(len, lines)):
      yield from sources.jsonl_tasks(path, first, split, options.task_bytes)
      first += count

  return tasks(), sum(s[1] for s in stats), described, stats, split


def _check_out_dir(out_dir: str) -> None:
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise DataError(f"--out_dir={out_dir!r} is a file. Fix: give a directory (new or empty).")
  problem = files.unwritable_dir(out_dir)
  if problem:
    raise DataError(f"--out_dir={out_dir!r}: {problem}. Fix: choose a directory you can write, "
                    f"e.g. --out_dir=data/{os.path.basename(os.path.normpath(out_dir)) or 'x'}.")
  if os.path.isdir(out_dir):
    foreign = [name for name in os.listdir(out_dir) if not shards.owned_names(name)]
    if foreign:
      raise DataError(f"--out_dir={out_dir!r} holds files gptjax.prepare did not write ("
                      f"{', '.join(sorted(foreign)[:3])}{', ...' if len(foreign) > 3 else ''}). "
                      f"Fix: give a new or empty directory.")


def prepare(options: Options, tokenizer=None) -> dict:
  """Tokenizes the inputs into `options.out_dir` (see the module docstring). Returns its meta.json.

  `tokenizer`: the tokenizer options.tokenizer names, when the caller has built it already.

  Raises:
    DataError: an input that names nothing, a non-UTF-8 file, a bad JSON line, an unreachable
      dataset, an unusable tokenizer or out_dir, a corpus that leaves a split empty.
  """
  tokenizer = tokenizer or tokenizer_lib.get_tokenizer(
      options.tokenizer, options.tokenizer_path, options.eot_token, flag="--tokenizer_path")
  if not 0 < options.val_fraction < 1:
    raise UserError(f"--val_fraction={options.val_fraction} is outside (0, 1). Fix: e.g. "
                    f"--val_fraction={sources.VAL_FRACTION} (the default).")
  _check_out_dir(options.out_dir)
  tasks, total_bytes, described, stat_key, split = _plan(options, tokenizer)
  key = hashlib.sha256(
      json.dumps([
          stat_key,
          tokenizer.spec(), options.val_fraction, options.seed, options.text_field,
          options.shard_tokens, shards.VERSION, sources.SPLIT_RULE
      ],
                 default=str).encode()).hexdigest()
  existing = _already_prepared(options.out_dir, key) if os.path.isdir(options.out_dir) else None
  if existing and not options.force:
    print(
        f"{options.out_dir} is already prepared from these inputs with this tokenizer: "
        f"nothing to do (--force to redo).",
        file=sys.stderr)
    return existing
  _remove_abandoned_staging(options.out_dir)
  staging = os.path.join(options.out_dir, f"{shards.STAGING}-{socket.gethostname()}-{os.getpid()}")
  created = not os.path.exists(options.out_dir)

  def undo() -> None:  # nothing of a prepare that did not finish stays behind
    shutil.rmtree(staging, ignore_errors=True)
    if created:
      shutil.rmtree(options.out_dir, ignore_errors=True)

  try:
    with disk_full_as_error(options.out_dir, "writing token shards",
                            "it starts over, nothing half-written was kept."), \
        files.undo_on_interrupt(undo):
      os.makedirs(staging)
      meta = _tokenize_into(staging, tasks, total_bytes, tokenizer, options, split)
      meta["source"].update(inputs=options.inputs,
                            hf_dataset=options.hf_dataset or None,
                            description=described,
                            key=key)
      if tokenizer.name == "hf":
        shutil.copyfile(tokenizer.path, os.path.join(staging, "tokenizer.json"))
      # Another process preparing the same may finish first.
      with files.locked(os.path.join(options.out_dir, shards.LOCK)):
        done = _already_prepared(options.out_dir, key)
        if done and not options.force:
          shutil.rmtree(staging)
          return done
        shards.commit(staging, options.out_dir, meta)
  except BaseException:
    undo()
    raise
  return meta


def _already_prepared(out_dir: str, key: str) -> dict | None:
  """out_dir's meta.json if it is complete, intact and made from the same inputs and settings."""
  try:
    meta = shards.read_meta(out_dir)
  except DataError:  # a damaged meta.json of ours: prepared again
    return None
  if meta and meta["source"].get("key") == key and not shards.shard_problem(out_dir, meta):
    return meta
  return None


def _remove_abandoned_staging(out_dir: str) -> None:
  """Removes what prepares killed on this host left (their process is gone): a fresh start."""
  host = socket.gethostname()
  for staging in shards.staging_dirs(out_dir):
    name_host, _, pid = os.path.basename(staging)[len(shards.STAGING) + 1:].rpartition("-")
    if name_host == host and pid.isdigit() and not _alive(int(pid)) or not pid.isdigit():
      print(f"note: removing {staging}, left by a prepare that did not finish; starting over.",
            file=sys.stderr)
      shutil.rmtree(staging, ignore_errors=True)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _tokenize_into(staging: str, tasks, total_bytes, tokenizer, options: Options,
                   val_split: sources.ValSplit) -> dict:
  dtype = tokenizer_lib.smallest_dtype(tokenizer.n_vocab)
  writers = {
      split: shards.ShardWriter(staging, split, dtype, options.shard_tokens)
      for split in shards.SPLITS
  }
  num_proc = options.num_proc or encode.usable_cores()
  if total_bytes is not None and total_bytes < MIN_PARALLEL_BYTES:
    num_proc = 1
  documents = {split: 0 for split in shards.SPLITS}
  digest, skipped, read = hashlib.sha256(), 0, 0
  bar = tqdm(desc="tokenizing",
             unit="tok",
             unit_scale=True,
             file=sys.stderr,
             dynamic_ncols=True,
             disable=(not options.progress) if options.progress is not None else None)
  with bar:
    for result in encode.run_tasks(tasks, tokenizer, num_proc, options.text_field,
                                   options.tokenizer_path, options.eot_token):
      for split in shards.SPLITS:
        writers[split].write(result["tokens"][split])
        documents[split] += result["documents"][split]
      digest.update(result["sha256"])
      skipped += result["skipped"]
      read += result["text_bytes"]
      bar.update(sum(len(t) for t in result["tokens"].values()))
      bar.set_postfix_str(f"{read / 1e6:,.0f}" +
                          (f"/{total_bytes / 1e6:,.0f}" if total_bytes else "") + " MB")
  if val_split.tail_doc is not None:  # the one document's head is training's
    documents["train"] = 1
  splits = {}
  for split, writer in writers.items():
    written = writer.close()
    splits[split] = dict(tokens=sum(s["tokens"] for s in written),
                         documents=documents[split],
                         shards=written)
  if not (splits["train"]["tokens"] and splits["val"]["tokens"]):
    raise DataError(f"the inputs gave {splits['train']['tokens']} train and "
                    f"{splits['val']['tokens']} val tokens ({read:,} bytes of text, {skipped} "
                    f"empty documents): too little to split. Fix: give more text.")
  spec = tokenizer.spec()
  return dict(format=shards.FORMAT,
              version=shards.VERSION,
              tokenizer=spec,
              vocab_size=spec["vocab_size"],
              eot_id=spec["eot_id"],
              dtype=np.dtype(dtype).name,
              splits=splits,
              skipped_empty_documents=skipped,
              val_fraction=options.val_fraction,
              validation="tail" if val_split.tail_doc is not None else "documents",
              seed=options.seed,
              source=dict(sha256=digest.hexdigest(), bytes=read, text_field=options.text_field),
              created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def summary(meta: dict, out_dir: str) -> str:
  train, val = meta["splits"]["train"], meta["splits"]["val"]
  if meta.get("validation") == "tail":
    share = f"{100 * meta['val_fraction']:g}%"
    documents = (f"1 document, whose last {share} (cut after a line) is validation", "its tail")
  else:
    documents = (f"{train['documents'] + val['documents']:,} documents",
                 f"{val['documents']:,} whole documents")
  return (f"{out_dir}: {train['tokens']:,} train tokens ({len(train['shards'])} shards) and "
          f"{val['tokens']:,} val tokens ({documents[1]}) from {documents[0]}, {meta['dtype']}, "
          f"tokenizer {tokenizer_lib.describe(meta['tokenizer'])}" +
          (f"; {meta['skipped_empty_documents']:,} empty documents skipped"
           if meta["skipped_empty_documents"] else "") +
          f". Train on it with --config.data_dir={out_dir}")
