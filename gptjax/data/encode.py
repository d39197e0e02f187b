"""prepare's worker side: tokenizing a task (gptjax/data/sources.py's pieces) into token arrays,
in worker processes or in this one (no JAX).

Each worker builds its own copy of the main process's tokenizer and ignores Ctrl-C, which is the
main process's to handle (it stops them). Results come back in task order.
"""

from __future__ import annotations

import collections
import hashlib
import json
import multiprocessing
import os
import signal
import sys

import numpy as np

from gptjax.data import shards
from gptjax.data import tokenizer as tokenizer_lib
from gptjax.errors import DataError

_worker: dict = {}


def _init_worker(kind: str, tokenizer_path: str, eot_token: str) -> None:
  """A worker process builds its own copy of the main process's tokenizer."""
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one core per worker process
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
  _worker["tokenizer"] = tokenizer_lib.get_tokenizer(kind, tokenizer_path, eot_token)


def _decode(raw: bytes, where: str, offset: int) -> str:
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    nul = raw.find(b"\0")
    if nul != -1:
      raise DataError(f"{where} is binary, not text (a NUL byte at {offset + nul:,}). Fix: leave "
                      f"the file out of --input.") from None
    raise DataError(f"{where} is not UTF-8 at byte {offset + e.start:,} "
                    f"({raw[e.start:e.start + 4]!r}). Fix: convert it (e.g. `iconv -f latin1 -t "
                    f"utf-8`), or leave the file out.") from None


def jsonl_documents(piece, field: str):
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
      for _, text, split in jsonl_documents(piece, field):
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


def run_tasks(tasks, tokenizer, num_proc: int, field: str, tokenizer_path: str, eot_token: str):
  """encode_task over `tasks`, results in order; with num_proc > 1 in worker processes, never more
  than 2 * num_proc tasks in flight (memory stays bounded however long the stream)."""
  if num_proc <= 1:
    _worker["tokenizer"] = tokenizer
    for pieces, _ in tasks:
      yield encode_task(pieces, field)
    return
  context = multiprocessing.get_context("spawn" if _jax_started() else "fork")
  kind = tokenizer.path if tokenizer.name == "hf" else tokenizer.name
  init_args = (kind, tokenizer_path, eot_token)
  with context.Pool(num_proc, initializer=_init_worker, initargs=init_args) as pool:
    in_flight = collections.deque()
    for pieces, _ in tasks:
      in_flight.append(pool.apply_async(encode_task, (pieces, field)))
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
