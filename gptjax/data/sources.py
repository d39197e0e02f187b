"""Where prepare's documents come from, cut into tasks for its worker processes (no JAX).

Documents: a text file is one document; a JSON-lines file (.jsonl, .ndjson) is one document a
line, its `text_field`; a Hugging Face dataset is one a row, streamed. A task is a list of pieces
of about `task_bytes` of text, each piece a whole document or (for a large one) a stretch of it cut
where tokenizing it alone gives exactly the tokens it gets inside the document:

  ("file", path, start, stop, split, ends_doc)   bytes [start, stop) of a text file
  ("jsonl", path, start, stop, first_line, val_lines)   whole lines; val_lines: line numbers
  ("text", text, split, ends_doc)   text held in memory (a dataset row, the default corpus)

Which documents are validation is decided here, before any tokenizing: `max(1, round(n *
val_fraction))` of the n documents, drawn with `seed` (a seeded coin per document for a streamed
dataset, whose n is unknown). A corpus of one text document has no whole document to spare: its
last val_fraction, cut after a line, is validation, as in nanoGPT's shakespeare/prepare.py.
"""

from __future__ import annotations

import glob
import os
from typing import Iterator

import numpy as np

from gptjax.errors import DataError

JSONL_EXTENSIONS = (".jsonl", ".ndjson")
_READ = 1 << 16


def expand_inputs(inputs: list[str]) -> list[str]:
  """The files `inputs` name: files, globs (** recurses) and directories (every file below,
  sorted, hidden ones left out). An input that names nothing is an error."""
  files = []
  for spec in inputs:
    if os.path.isdir(spec):
      found = sorted(
          os.path.join(root, name)
          for root, dirs, names in os.walk(spec)
          for name in names
          if not name.startswith("."))
      if not found:
        raise DataError(f"--input={spec!r} is an empty directory. Fix: put text files in it, or "
                        f"point --input at the files themselves.")
    elif glob.has_magic(spec):
      found = sorted(path for path in glob.glob(spec, recursive=True) if os.path.isfile(path))
      if not found:
        raise DataError(f"--input={spec!r} matches no file. Fix: check the pattern (quote it so "
                        f"the shell does not expand it; ** needs a directory before it).")
    elif os.path.isfile(spec):
      found = [spec]
    else:
      raise DataError(f"--input={spec!r} does not exist. Fix: give a text or .jsonl file, a "
                      f"directory or a glob.")
    files.extend(found)
  return files


def is_jsonl(path: str) -> bool:
  return path.endswith(JSONL_EXTENSIONS)


def count_lines(path: str) -> int:
  count, last = 0, b"\n"
  with open(path, "rb") as f:
    while block := f.read(1 << 24):
      count += block.count(b"\n")
      last = block[-1:]
  return count + (last != b"\n")


class ValSplit:
  """Which documents are validation: exactly max(1, round(n * fraction)) of n known documents,
  else (n None: a stream) each with probability `fraction`; seeded either way."""

  def __init__(self, n_docs: int | None, fraction: float, seed: int):
    self.fraction, self.seed, self.mask = fraction, seed, None
    if n_docs is not None:
      self.mask = np.zeros(n_docs, bool)
      self.mask[np.random.default_rng(seed).permutation(n_docs)[:max(1, round(n_docs *
                                                                              fraction))]] = 1

  def is_val(self, doc: int) -> bool:
    if self.mask is not None:
      return bool(self.mask[doc])
    return bool(np.random.default_rng([self.seed, doc]).random() < self.fraction)


def _safe(byte: int) -> bool:
  return 0x21 <= byte <= 0x7E  # printable ASCII, not space: no tokenizer joins across "x\ny"


def next_cut(data: bytes, start: int) -> int:
  """The first position >= start just after a newline with printable ASCII on both sides (where
  cutting cannot change how GPT-2 or a byte-level BPE pre-tokenizes); -1 if there is none."""
  cut = data.find(b"\n", start)
  while cut != -1 and not (0 < cut < len(data) - 1 and _safe(data[cut - 1]) and
                           _safe(data[cut + 1])):
    cut = data.find(b"\n", cut + 1)
  return -1 if cut == -1 else cut + 1


def file_cut(path: str, position: int, size: int, search: int = 1 << 22) -> int:
  """next_cut in a file at or after `position`, reading only around it; `size` where there is
  none. A document with no such line break for `search` bytes is cut at a character boundary
  (the one place where its tokens may differ from tokenizing it whole)."""
  start, limit = position, min(size, position + search)
  with open(path, "rb") as f:
    while position < limit:
      f.seek(max(0, position - 1))
      window = f.read(_READ + 2)
      cut = next_cut(window, min(1, position))
      if cut != -1:
        return max(0, position - 1) + cut
      position += _READ
    if limit == size:
      return size
    f.seek(start)
    return start + _boundary_offset(f.read(4))


def _boundary_offset(head: bytes) -> int:
  """Bytes to skip from a position to the next UTF-8 character start (0 to 3)."""
  offset = 0
  while offset < len(head) and 0x80 <= head[offset] < 0xC0:
    offset += 1
  return offset


def char_boundary(data: bytes, position: int) -> int:
  """`position`, moved back off UTF-8 continuation bytes."""
  while 0 < position < len(data) and 0x80 <= data[position] < 0xC0:
    position -= 1
  return position


def _tail_cut(read, size: int, fraction: float) -> int:
  """Where a one-document corpus's validation tail starts: after a line, else at a character."""
  target = int(size * (1 - fraction))
  window = read(max(0, target - 4), _READ)
  cut = window.find(b"\n", min(4, target))
  return max(0, target - 4) + (cut + 1 if cut != -1 else char_boundary(window, min(4, target)))


def text_file_tasks(paths: list[str],
                    first_doc: int,
                    split: ValSplit,
                    task_bytes: int,
                    tail_fraction: float | None = None) -> Iterator[tuple[list, int]]:
  """(pieces, bytes) tasks for text files, one document each (see the module docstring);
  `tail_fraction`: the only document, split by its tail."""
  pieces, size_so_far = [], 0
  for doc, path in enumerate(paths, first_doc):
    size = os.path.getsize(path)
    if tail_fraction is not None:
      with open(path, "rb") as f:

        def read(offset, n, f=f):
          f.seek(offset)
          return f.read(n)

        tail = _tail_cut(read, size, tail_fraction)
      spans = [(0, tail, "train", False), (tail, size, "val", True)]
    else:
      spans = [(0, size, "val" if split.is_val(doc) else "train", True)]
    for span_start, span_stop, which, ends in spans:
      start = span_start
      while True:  # once at least: an empty file is a piece too (counted as skipped)
        stop = span_stop if span_stop - start <= task_bytes else file_cut(
            path, start + task_bytes, span_stop)
        pieces.append(("file", path, start, stop, which, ends and stop == span_stop))
        size_so_far, start = size_so_far + stop - start, stop
        if size_so_far >= task_bytes:
          yield pieces, size_so_far
          pieces, size_so_far = [], 0
        if start >= span_stop:
          break
  if pieces:
    yield pieces, size_so_far


def jsonl_tasks(path: str, first_doc: int, split: ValSplit,
                task_bytes: int) -> Iterator[tuple[list, int]]:
  """Tasks of whole lines of one JSON-lines file: each a ("jsonl", ...) piece."""
  size, start, line = os.path.getsize(path), 0, 0
  with open(path, "rb") as f:
    while start < size:
      f.seek(start)
      block = f.read(task_bytes)
      end = block.rfind(b"\n") + 1
      while end == 0 and start + len(block) < size:  # a line longer than task_bytes
        block += f.read(task_bytes)
        end = block.rfind(b"\n") + 1
      end = end or len(block)
      if start + len(block) >= size:
        end = len(block)
      lines = block[:end].count(b"\n") + (not block[:end].endswith(b"\n"))
      val = tuple(i for i in range(line, line + lines) if split.is_val(first_doc + i))
      yield [("jsonl", path, start, start + end, line, val)], end
      start, line = start + end, line + lines


def text_tasks(texts,
               first_doc: int,
               split: ValSplit,
               task_bytes: int,
               tail_fraction: float | None = None) -> Iterator[tuple[list, int]]:
  """Tasks of in-memory documents (dataset rows, the default corpus); a document larger than
  task_bytes is cut as files are (next_cut); `tail_fraction`: the only document, split by its tail."""
  pieces, size_so_far = [], 0
  for doc, text in enumerate(texts, first_doc):
    if tail_fraction is not None:
      raw = text.encode("utf-8")
      tail = _tail_cut(lambda offset, n: raw[offset:offset + n], len(raw), tail_fraction)
      spans = [(raw[:tail].decode(), "train", False), (raw[tail:].decode(), "val", True)]
    else:
      spans = [(text, "val" if split.is_val(doc) else "train", True)]
    for span, which, ends in spans:
      for part, last in _cut_text(span, task_bytes):
        pieces.append(("text", part, which, ends and last))
        size_so_far += len(part)
        if size_so_far >= task_bytes:
          yield pieces, size_so_far
          pieces, size_so_far = [], 0
  if pieces:
    yield pieces, size_so_far


def _cut_text(text: str, chunk: int) -> Iterator[tuple[str, bool]]:
  if len(text) <= chunk:
    yield text, True
    return
  raw = text.encode("utf-8")
  start = 0
  while start < len(raw):
    cut = next_cut(raw, start + chunk) if start + chunk < len(raw) else -1
    stop = len(raw) if cut == -1 else cut
    yield raw[start:stop].decode("utf-8"), stop == len(raw)
    start = stop


def hf_texts(name: str, config_name: str, split_name: str, field: str) -> Iterator[str]:
  """The `field` of every row of a Hugging Face dataset, streamed (nothing downloaded whole)."""
  try:
    import datasets
  except ImportError as e:
    raise DataError(f"--hf_dataset={name!r} needs the `datasets` package, which is not installed. "
                    f"Fix: pip install datasets (and network to reach the Hugging Face hub), or "
                    f"export the dataset to .jsonl files and pass them with --input.") from e
  try:
    dataset = datasets.load_dataset(name, config_name or None, split=split_name, streaming=True)
    rows = iter(dataset)
    first = next(rows, None)
  except Exception as e:  # no network, unknown name: datasets raises many kinds
    raise DataError(f"--hf_dataset={name!r} (split {split_name!r}) could not be opened: "
                    f"{type(e).__name__}: {str(e)[:300]}. Fix: check the name, and that this "
                    f"machine has network (no network: export the dataset to .jsonl elsewhere and "
                    f"pass the files with --input).") from e
  if first is None:
    raise DataError(f"--hf_dataset={name!r} split {split_name!r} has no rows.")
  if field not in first:
    raise DataError(f"--hf_dataset={name!r} rows have no field {field!r} (fields: "
                    f"{', '.join(sorted(first))}). Fix: --text_field=<one of them>.")
  yield first[field]
  for row in rows:
    yield row[field]
