"""Text -> token shards, once, on every core: the library half of `python -m gptjax.prepare`.

Inputs: text files (one document each), globs, directories, JSON-lines files (one document a line)
and, with the `datasets` package and network, a Hugging Face dataset, streamed. Tokenizers: bytes,
gpt2 (tiktoken) or a Hugging Face tokenizer.json. Output: <out_dir>/train-NNNNN.bin and
val-NNNNN.bin (uint16, or uint32 for vocabularies over 65,536), every document followed by the
end-of-text id, and meta.json (gptjax/data/shards.py). Validation is whole documents, drawn with --seed.
Worker processes tokenize tasks of a few MB each while the main process writes them in order, so
memory stays bounded whatever the corpus size. Everything is written under <out_dir>/.prepare-partial
and moved into place, meta.json last, when complete: a killed prepare leaves no meta.json, which
training refuses, and running the command again starts over. Run again unchanged, it does nothing.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import hashlib
import json
import multiprocessing
import os
import shutil
import socket
import sys

import numpy as np
from tqdm import tqdm

from gptjax import files
from gptjax.data import shards, sources
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
  val_fraction: float = 0.0005
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


# --- worker side ---------------------------------------------------------------------------------

_worker: dict = {}


def _init_worker(kind: str, tokenizer_path: str, eot_token: str) -> None:
  """A worker process builds its own copy of the main process's tokenizer."""
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one core per worker process
  _worker["tokenizer"] = tokenizer_lib.get_tokenizer(kind, tokenizer_path, eot_token)


def _decode(raw: bytes, where: str, offset: int) -> str:
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise DataError(f"{where} is not UTF-8 at byte {offset + e.start:,} "
                    f"({raw[e.start:e.start + 4]!r}). Fix: convert it (e.g. `iconv -f latin1 -t "
                    f"utf-8`), or leave the file out.") from None


def _jsonl_documents(piece, field: str):
  """(line number, text or None for a skipped empty one, split) of a ("jsonl", ...) piece."""
  _, path, start, stop, first_line, val_lines = piece
  with open(path, "rb") as f:
    f.seek(start)
    block = f.read(stop - start)
  val_lines, line, offset = set(val_lines), first_line, start
  for raw in block.split(b"\n"):
    if raw.strip():  # blank lines are not documents
      where = f"{path}:{line + 1}"
      try:
        row = json.loads(_decode(raw, where, offset))
      except json.JSONDecodeError as e:
        raise DataError(f"{where} is not a JSON line ({e}). Fix: one JSON object a line.") from None
      if not isinstance(row, dict) or not isinstance(row.get(field), str):
        found = sorted(row) if isinstance(row, dict) else type(row).__name__
        raise DataError(f"{where} has no text field {field!r} (found: {found}). Fix: "
                        f"--text_field=<the field holding the text>.")
      yield line, row[field] or None, "val" if line in val_lines else "train"
    offset += len(raw) + 1
    line += 1


def encode_task(pieces: list, field: str = "text") -> dict:
  """Tokenizes one task (see gptjax/data/sources.py): per split, the tokens of its pieces in order,
  end-of-text after each document; the counts; the sha256 of the text read."""
  tokenizer = _worker["tokenizer"]
  eot = [] if tokenizer.eot_id is None else [tokenizer.eot_id]
  parts = {split: [] for split in shards.SPLITS}
  documents = {split: 0 for split in shards.SPLITS}
  digest, skipped, text_bytes = hashlib.sha256(), 0, 0

  def add(text: str | None, split: str, ends_doc: bool) -> None:
    nonlocal skipped
    if text is None:
      skipped += 1
      return
    parts[split].append(tokenizer.encode(text))
    if ends_doc:
      parts[split].append(np.asarray(eot, parts[split][-1].dtype))
      documents[split] += 1

  for piece in pieces:
    if piece[0] == "file":
      _, path, start, stop, split, ends_doc = piece
      with open(path, "rb") as f:
        f.seek(start)
        raw = f.read(stop - start)
      digest.update(raw)
      text_bytes += len(raw)
      whole_empty = start == stop == 0
      add(None if whole_empty else _decode(raw, path, start), split, ends_doc)
    elif piece[0] == "jsonl":
      digest.update(f"{piece[1]}:{piece[2]}:{piece[3]}".encode())
      text_bytes += piece[3] - piece[2]
      for _, text, split in _jsonl_documents(piece, field):
        if text is not None:
          digest.update(text.encode("utf-8"))
        add(text, split, True)
    else:
      _, text, split, ends_doc = piece
      raw = text.encode("utf-8")
      digest.update(raw)
      text_bytes += len(raw)
      add(text or None if ends_doc else text, split, ends_doc)
  tokens = {split: np.concatenate(p) if p else np.zeros(0, np.uint32) for split, p in parts.items()}
  return dict(tokens=tokens,
              documents=documents,
              skipped=skipped,
              sha256=digest.digest(),
              text_bytes=text_bytes)


def _run_tasks(tasks, options: Options, tokenizer, num_proc: int):
  """encode_task over `tasks`, results in order; with num_proc > 1 in worker processes, never more
  than 2 * num_proc tasks in flight (memory stays bounded however long the stream)."""
  if num_proc <= 1:
    _worker["tokenizer"] = tokenizer
    for pieces, _ in tasks:
      yield encode_task(pieces, options.text_field)
    return
  context = multiprocessing.get_context("spawn" if _jax_started() else "fork")
  kind = tokenizer.path if tokenizer.name == "hf" else tokenizer.name
  init_args = (kind, options.tokenizer_path, options.eot_token)
  with context.Pool(num_proc, initializer=_init_worker, initargs=init_args) as pool:
    in_flight = collections.deque()
    for pieces, _ in tasks:
      in_flight.append(pool.apply_async(encode_task, (pieces, options.text_field)))
      if len(in_flight) >= 2 * num_proc:
        yield in_flight.popleft().get()
    while in_flight:
      yield in_flight.popleft().get()


def usable_cores() -> int:
  """The cores this process may run on (its affinity where the OS has one)."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _jax_started() -> bool:
  """Whether JAX's backends (and their threads) are up: then workers are spawned, not forked."""
  bridge = sys.modules.get("jax._src.xla_bridge")
  return bool(bridge and bridge.backends_are_initialized())


# --- main side -----------------------------------------------------------------------------------


def _plan(options: Options):
  """(tasks, total input bytes or None, description of the source, stat key parts)."""
  val_fraction = options.val_fraction
  if options.texts is not None:
    texts = list(options.texts)
    tail = val_fraction if len(texts) == 1 else None
    split = sources.ValSplit(len(texts), val_fraction, options.seed)
    total = sum(len(t) for t in texts)
    key = hashlib.sha256("\0".join(texts).encode()).hexdigest()
    return sources.text_tasks(texts, 0, split, options.task_bytes, tail), total, "text", [key]
  if options.hf_dataset:
    split = sources.ValSplit(None, val_fraction, options.seed)
    texts = sources.hf_texts(options.hf_dataset, options.hf_config, options.hf_split,
                             options.text_field)
    key = [options.hf_dataset, options.hf_config, options.hf_split, options.text_field]
    return sources.text_tasks(texts, 0, split, options.task_bytes), None, "hf", key
  files = sources.expand_inputs(options.inputs)
  jsonl = [path for path in files if sources.is_jsonl(path)]
  text_files = [path for path in files if not sources.is_jsonl(path)]
  lines = [sources.count_lines(path) for path in jsonl]
  n_docs = len(text_files) + sum(lines)
  if n_docs == 1 and jsonl:
    raise DataError(f"--input: {jsonl[0]!r} holds one document, and validation takes whole "
                    f"documents. Fix: give more documents (or the text as a .txt file).")
  tail = val_fraction if n_docs == 1 else None
  split = sources.ValSplit(n_docs, val_fraction, options.seed)

  def tasks():
    yield from sources.text_file_tasks(text_files, 0, split, options.task_bytes, tail)
    first = len(text_files)
    for path, count in zip(jsonl, lines):
      yield from sources.jsonl_tasks(path, first, split, options.task_bytes)
      first += count

  stats = [(os.path.abspath(p), os.path.getsize(p), os.stat(p).st_mtime_ns) for p in files]
  return tasks(), sum(s[1] for s in stats), f"{len(files)} files", stats


def _check_out_dir(out_dir: str) -> None:
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise DataError(f"--out_dir={out_dir!r} is a file. Fix: give a directory (new or empty).")
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
  tokenizer = tokenizer or tokenizer_lib.get_tokenizer(options.tokenizer, options.tokenizer_path,
                                                       options.eot_token)
  if not 0 < options.val_fraction < 1:
    raise UserError(f"--val_fraction={options.val_fraction} is outside (0, 1). Fix: e.g. 0.0005 "
                    f"for a large corpus, 0.1 for one text file.")
  _check_out_dir(options.out_dir)
  tasks, total_bytes, described, stat_key = _plan(options)
  key = hashlib.sha256(
      json.dumps([
          stat_key,
          tokenizer.spec(), options.val_fraction, options.seed, options.text_field,
          options.shard_tokens, shards.VERSION
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
  os.makedirs(staging)
  try:
    with disk_full_as_error(options.out_dir, "writing token shards",
                            "it starts over, nothing half-written was kept."):
      meta = _tokenize_into(staging, tasks, total_bytes, tokenizer, options)
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
    shutil.rmtree(staging, ignore_errors=True)
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


def _tokenize_into(staging: str, tasks, total_bytes, tokenizer, options: Options) -> dict:
  dtype = tokenizer_lib.smallest_dtype(tokenizer.n_vocab)
  writers = {
      split: shards.ShardWriter(staging, split, dtype, options.shard_tokens)
      for split in shards.SPLITS
  }
  num_proc = options.num_proc or usable_cores()
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
    for result in _run_tasks(tasks, options, tokenizer, num_proc):
      for split in shards.SPLITS:
        writers[split].write(result["tokens"][split])
        documents[split] += result["documents"][split]
      digest.update(result["sha256"])
      skipped += result["skipped"]
      read += result["text_bytes"]
      bar.update(sum(len(t) for t in result["tokens"].values()))
      bar.set_postfix_str(f"{read / 1e6:,.0f}" +
                          (f"/{total_bytes / 1e6:,.0f}" if total_bytes else "") + " MB")
  splits = {}
  for split, writer in writers.items():
    written = writer.close()
    splits[split] = dict(tokens=sum(s["tokens"] for s in written),
                         documents=documents[split],
                         shards=written)
  for split in shards.SPLITS:
    if splits[split]["tokens"] == 0:
      raise DataError(f"the inputs gave no {split} tokens ({sum(documents.values())} documents, "
                      f"{skipped} empty). Fix: " +
                      ("raise --val_fraction, or give more documents" if split ==
                       "val" else "give more text, or a smaller --val_fraction") + ".")
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
              seed=options.seed,
              source=dict(sha256=digest.hexdigest(), bytes=read, text_field=options.text_field),
              created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def summary(meta: dict, out_dir: str) -> str:
  train, val = meta["splits"]["train"], meta["splits"]["val"]
  return (f"{out_dir}: {train['tokens']:,} train tokens ({train['documents']:,} documents, "
          f"{len(train['shards'])} shards) and {val['tokens']:,} val tokens ({val['documents']:,} "
          f"documents), {meta['dtype']}, tokenizer {tokenizer_lib.describe(meta['tokenizer'])}" +
          (f"; {meta['skipped_empty_documents']:,} empty documents skipped"
           if meta["skipped_empty_documents"] else "") +
          f". Train on it with --config.data_dir={out_dir}")
