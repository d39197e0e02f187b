"""Where prepare's documents come from, cut into tasks for its worker processes (no JAX).

Documents: a text file is one document; a JSON-lines file (.jsonl, .ndjson) is one document a
line, its `text_field`; a Hugging Face dataset is one a row, streamed. A task is a list of pieces
of about `task_bytes` of text, each piece a whole document or (for a large one) a stretch of it cut
where tokenizing it alone gives exactly the tokens it gets inside the document:

  ("file", path, start, stop, split, ends_doc)   bytes [start, stop) of a text file
  ("jsonl", path, start, stop, first_line, val_lines)   whole lines; val_lines: line numbers
  ("text", text, split, ends_doc)   text held in memory (a dataset row, the default corpus)

Which text is validation is decided here, before any tokenizing, by one rule (`ValSplit`) for
`gptjax.prepare` and for training's `input_file` alike. A corpus of one document has no whole
document to spare: its last `fraction` (10% by default), cut after a line, is validation, as in
nanoGPT's shakespeare/prepare.py. Of several documents, whole ones are drawn in an order seeded by
`seed` until validation holds at least min(fraction of the corpus, VAL_MAX_TOKENS) and at least
two documents where there are 20 or more; a document that would take validation past half of the
corpus is passed over. Sizes are counted in bytes before tokenizing, the token cap converted with
the tokenizer's bytes per token on a sample. A streamed dataset, of unknown size, draws a seeded
coin per document with probability `fraction` until validation holds the cap.

Directories and globs leave out what is not text: binary files (a NUL byte in their first 8 KB),
hidden directories (.git, .hg, .svn, caches) and __pycache__, with one counted note.
"""

from __future__ import annotations

import glob
import os
import sys
from typing import Iterator, Sequence

import numpy as np

from gptjax.errors import DataError

JSONL_EXTENSIONS = (".jsonl", ".ndjson")
SPLIT_RULE = 2  # the version of the rule below, in prepare's key: a new rule prepares again
VAL_FRACTION = 0.1  # nanoGPT's shakespeare split; 1 - train_split for training's input_file
VAL_MAX_TOKENS = 10_000_000  # validation needs no more to measure a loss to 3 decimals
VAL_MIN_DOCUMENTS = 2  # where the corpus has MANY_DOCUMENTS or more
MANY_DOCUMENTS = 20
CACHE_DIRS = ("__pycache__",)  # left out of directories and globs, as hidden directories are
_READ = 1 << 16
_BINARY_PROBE = 8000  # bytes read for a NUL, as git decides a file is binary


def expand_inputs(inputs: list[str]) -> list[str]:
  """The files `inputs` name: files, globs (** recurses) and directories (every file below,
  sorted). Directories and globs leave out binary files, hidden files and directories and
  caches, with one counted note on stderr; a file named itself is always read. An input that
  names nothing is an error."""
  files, left_out = [], {"binary files": [], "hidden or cache directories": [], "hidden files": []}
  for spec in inputs:
    if os.path.isdir(spec):
      found = []
      for root, dirs, names in os.walk(spec):
        for name in sorted(d for d in dirs if _ignored_dir(d)):
          dirs.remove(name)
          left_out["hidden or cache directories"].append(os.path.join(root, name) + os.sep)
        found += [os.path.join(root, name) for name in names]
      found = sorted(found)
      if not found:
        raise DataError(f"--input={spec!r} is an empty directory. Fix: put text files in it, or "
                        f"point --input at the files themselves.")
    elif glob.has_magic(spec):
      found = sorted(path for path in glob.glob(spec, recursive=True) if os.path.isfile(path))
      if not found:
        raise DataError(f"--input={spec!r} matches no file. Fix: check the pattern (quote it so "
                        f"the shell does not expand it; ** needs a directory before it).")
    elif os.path.isfile(spec):
      files.append(spec)
      continue
    else:
      raise DataError(f"--input={spec!r} does not exist. Fix: give a text or .jsonl file, a "
                      f"directory or a glob.")
    base = spec if os.path.isdir(spec) else _glob_base(spec)
    for path in found:
      parts = os.path.relpath(path, base).split(os.sep)
      if any(
          part.startswith(".") and part not in (".", "..") or part in CACHE_DIRS for part in parts):
        left_out["hidden files"].append(path)
      elif looks_binary(path):
        left_out["binary files"].append(path)
      else:
        files.append(path)
  if any(left_out.values()):
    print("note: --input: left out what is not text: " + "; ".join(
        f"{kind}: {len(paths)} (e.g. {paths[0]})" for kind, paths in left_out.items() if paths) +
          ".",
          file=sys.stderr)
  if not files:
    raise DataError(f"--input={' '.join(inputs)!r} names no text file (only binary files, or "
                    f"files in hidden or cache directories). Fix: point --input at text files.")
  return files


def _glob_base(pattern: str) -> str:
  """The directory a glob starts from: its components before the first with a wildcard."""
  parts = pattern.split(os.sep)
  fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
  return os.sep.join(parts[:fixed]) or ("/" if pattern.startswith(os.sep) else ".")


def _ignored_dir(name: str) -> bool:
  return name.startswith(".") or name in CACHE_DIRS


def looks_binary(path: str) -> bool:
  """Whether a file holds a NUL byte in its first 8 KB (no text does; .pyc, images, archives do)."""
  with open(path, "rb") as f:
    return b"\0" in f.read(_BINARY_PROBE)


def is_jsonl(path: str) -> bool:
  return path.endswith(JSONL_EXTENSIONS)


def line_sizes(path: str) -> np.ndarray:
  """The size in bytes of every line of a file (a JSON-lines file's documents), newlines left out;
  the text after the last newline is a line too."""
  sizes, start, offset = [], 0, 0
  with open(path, "rb") as f:
    while block := f.read(1 << 24):
      ends = np.flatnonzero(np.frombuffer(block, np.uint8) == 10) + offset
      sizes.append(np.diff(np.concatenate([[start], ends + 1])) - 1)
      start = int(ends[-1]) + 1 if len(ends) else start
      offset += len(block)
  if offset > start:
    sizes.append(np.asarray([offset - start]))
  return np.concatenate(sizes).astype(np.int64) if sizes else np.zeros(0, np.int64)


def choose_validation(sizes: Sequence[int], fraction: float, seed: int,
                      max_bytes: float) -> np.ndarray:
  """The validation documents of a corpus of documents of `sizes` bytes (the module docstring's
  rule), as a boolean mask: drawn in an order seeded by `seed` until they hold at least
  min(fraction of the bytes, max_bytes) and VAL_MIN_DOCUMENTS where there are MANY_DOCUMENTS or
  more (one otherwise), passing over any that would take validation past half of the bytes."""
  sizes = np.asarray(sizes, np.int64)
  total, n = int(sizes.sum()), int((sizes > 0).sum())
  target = min(fraction * total, max_bytes)
  need = VAL_MIN_DOCUMENTS if n >= MANY_DOCUMENTS else 1
  mask, held, count = np.zeros(len(sizes), bool), 0, 0
  for doc in np.random.default_rng(seed).permutation(len(sizes)):
    if held >= target and count >= need:
      break
    if sizes[doc] == 0 or 2 * (held + sizes[doc]) > total:  # empty, or too large to spare
      continue
    mask[doc], held, count = True, held + int(sizes[doc]), count + 1
  return mask


class ValSplit:
  """Which text is validation, by the module docstring's rule: `sizes` of the documents (bytes),
  or None for a stream; `max_bytes` is the token cap in bytes."""

  def __init__(self, sizes: Sequence[int] | None, fraction: float, seed: int, max_bytes: float):
    self.fraction, self.seed, self.max_bytes = fraction, seed, max_bytes
    self.mask, self.tail_doc, self.held = None, None, 0
    if sizes is not None:
      nonempty = np.flatnonzero(np.asarray(sizes) > 0)
      if len(nonempty) == 1:  # one document: its tail
        self.tail_doc = int(nonempty[0])
        self.mask = np.zeros(len(sizes), bool)
      else:
        self.mask = choose_validation(sizes, fraction, seed, max_bytes)

  def is_val(self, doc: int, size: int = 0) -> bool:
    if self.mask is not None:
      return bool(self.mask[doc])
    if self.held >= self.max_bytes:
      return False
    val = bool(np.random.default_rng([self.seed, doc]).random() < self.fraction)
    self.held += size if val else 0
    return val

  def tail(self, doc: int) -> float | None:
    """The fraction of document `doc` at its end that is validation: None but for a corpus of
    one document."""
    return self.fraction if doc == self.tail_doc else None


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


def text_file_tasks(paths: list[str], first_doc: int, split: ValSplit,
                    task_bytes: int) -> Iterator[tuple[list, int]]:
  """(pieces, bytes) tasks for text files, one document each (see the module docstring)."""
  pieces, size_so_far = [], 0
  for doc, path in enumerate(paths, first_doc):
    size, tail_fraction = os.path.getsize(path), split.tail(doc)
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


def text_tasks(texts, first_doc: int, split: ValSplit,
               task_bytes: int) -> Iterator[tuple[list, int]]:
  """Tasks of in-memory documents (dataset rows, the default corpus); a document larger than
  task_bytes is cut as files are (next_cut)."""
  pieces, size_so_far = [], 0
  for doc, text in enumerate(texts, first_doc):
    tail_fraction = split.tail(doc)
    if tail_fraction is not None:
      raw = text.encode("utf-8")
      tail = _tail_cut(lambda offset, n: raw[offset:offset + n], len(raw), tail_fraction)
      spans = [(raw[:tail].decode(), "train", False), (raw[tail:].decode(), "val", True)]
    else:
      spans = [(text, "val" if split.is_val(doc, len(text)) else "train", True)]
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
