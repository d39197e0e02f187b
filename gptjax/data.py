"""Tokenizers, corpora and batches.

Flow: text (a UTF-8 file, or the embedded default corpus) -> tokenizer -> uint16 token files
(train.bin / val.bin, cached under <out_dir>/token_cache/ and reused while the text and tokenizer
are unchanged) -> random windows of block_size + 1 tokens, drawn by a generator seeded with
(seed, step), so a run's batches are a pure function of its seed and step: resuming needs no data
state, and every process of a multi-host run draws the same global batch and loads its own rows.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import sys
import sysconfig

import numpy as np
import tiktoken
from tqdm import tqdm

from gptjax.config import GPT2_VOCAB_SIZE, resolve_tokenizer
from gptjax.errors import DataError

GPT2_TIKTOKEN_ENV = "GPTJAX_GPT2_TIKTOKEN"
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"
DEFAULT_CORPUS = "<python-stdlib>"  # the input_file="" corpus, see default_corpus_text()
CACHE_VERSION = 2  # 2: meta.json records fingerprints of the token files
_EVAL_STREAM = 7_919  # separates evaluation batches' random stream from training's


class ByteTokenizer:
  """UTF-8 bytes as tokens (vocab 256): any language, any text, nothing to download."""
  name = "bytes"
  n_vocab = 256

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)

  def decode(self, tokens) -> str:
    """Never fails: ids past 255 (padding rows) are dropped, cut multi-byte characters become U+FFFD."""
    data = bytes(int(t) for t in tokens if 0 <= int(t) < 256)
    return data.decode("utf-8", errors="replace")


class Gpt2Tokenizer:
  """GPT-2 BPE through tiktoken (vocab 50257; id 50256 is <|endoftext|>)."""
  name = "gpt2"
  n_vocab = GPT2_VOCAB_SIZE

  def __init__(self, encoding: tiktoken.Encoding):
    self.encoding = encoding

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self.encoding.encode_ordinary(text), dtype=np.uint16)

  def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
    return [np.asarray(t, dtype=np.uint16) for t in self.encoding.encode_ordinary_batch(texts)]

  def decode(self, tokens) -> str:
    return self.encoding.decode([int(t) for t in tokens if 0 <= int(t) < self.n_vocab])


def gpt2_encoding(tokenizer_path: str = "") -> tiktoken.Encoding:
  """GPT-2's BPE: from `tokenizer_path`, else $GPTJAX_GPT2_TIKTOKEN, else tiktoken's cache/download."""
  path = tokenizer_path or os.environ.get(GPT2_TIKTOKEN_ENV, "")
  if path:
    if not os.path.isfile(path):
      source = "config field 'tokenizer_path'" if tokenizer_path else f"${GPT2_TIKTOKEN_ENV}"
      raise DataError(f"{source}: GPT-2 BPE file {path!r} does not exist. Fix: point it at a "
                      f"gpt2.tiktoken ranks file (openai/whisper's assets/gpt2.tiktoken).")
    from tiktoken.load import load_tiktoken_bpe
    try:
      ranks = load_tiktoken_bpe(path)
    except Exception as e:
      raise DataError(f"GPT-2 BPE file {path!r} is not a .tiktoken ranks file ({e}).") from e
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={EOT: len(ranks)})
  try:
    return tiktoken.get_encoding("gpt2")
  except Exception as e:  # offline and not cached: tiktoken raises a requests/IO error
    raise DataError(
        "GPT-2 BPE is not available: tiktoken could not load or download 'gpt2' "
        f"({type(e).__name__}). Fix: with network, run once online; offline, pass "
        f"--config.tokenizer_path=/path/to/gpt2.tiktoken or set {GPT2_TIKTOKEN_ENV}; or train a "
        "byte-level preset (tiny_char, small_char) that needs no tokenizer file.") from e


def get_tokenizer(kind: str, tokenizer_path: str = ""):
  """The tokenizer named by `kind` ("bytes" or "gpt2"; resolve "auto" with config.resolve_tokenizer)."""
  return ByteTokenizer() if kind == "bytes" else Gpt2Tokenizer(gpt2_encoding(tokenizer_path))


def default_corpus_text() -> str:
  """The embedded default corpus: this Python's standard library, every top-level module's source.

  Every Python install carries it, so the default run needs no network and no file; it is about
  4.7 MB of real, varied text (code, docstrings, comments) on CPython 3.11.
  """
  paths = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
  parts = []
  for path in paths:
    with open(path, encoding="utf-8", errors="replace") as f:
      parts.append(f"# ---- {os.path.basename(path)} ----\n{f.read()}\n")
  return "".join(parts)


def read_corpus(input_file: str) -> tuple[str, bytes]:
  """(text, raw bytes) of `input_file`, or of the default corpus when it is ""."""
  if not input_file:
    text = default_corpus_text()
    return text, text.encode("utf-8")
  if os.path.isdir(input_file):
    raise DataError(f"config field 'input_file': {input_file!r} is a directory, not a text file. "
                    f"Fix: give one UTF-8 text file (e.g. `cat {input_file}/*.txt > corpus.txt`, "
                    f"then --config.input_file=corpus.txt).")
  if not os.path.isfile(input_file):
    raise DataError(f"config field 'input_file': {input_file!r} does not exist. Fix: give the path "
                    f"of a UTF-8 text file, or leave it empty to train on the default corpus.")
  with open(input_file, "rb") as f:
    raw = f.read()
  if not raw.strip():
    raise DataError(f"config field 'input_file': {input_file!r} is empty. Fix: give a file with "
                    f"text in it.")
  try:
    return raw.decode("utf-8"), raw
  except UnicodeDecodeError as e:
    raise DataError(f"config field 'input_file': {input_file!r} is not UTF-8 (byte {e.start}: "
                    f"{raw[e.start:e.start + 1]!r}). Fix: convert it, e.g. `iconv -f latin1 -t "
                    f"utf-8 {input_file} > {input_file}.utf8`.") from e


def _encode(tokenizer, text: str, chunk_chars: int = 1 << 20) -> np.ndarray:
  """Tokenizes `text`; a large text in parallel chunks, giving exactly the one-piece tokens.

  Chunks are cut only after a newline with non-space characters on both sides: GPT-2's
  pre-tokenizer joins runs of whitespace, so a cut anywhere else could tokenize differently.
  """
  if len(text) <= chunk_chars or not hasattr(tokenizer, "encode_batch"):
    return tokenizer.encode(text)
  chunks, start = [], 0
  while start < len(text):
    cut = text.find("\n", start + chunk_chars)
    while cut != -1 and cut + 1 < len(text) and (text[cut - 1].isspace() or
                                                 text[cut + 1].isspace()):
      cut = text.find("\n", cut + 1)
    stop = len(text) if cut == -1 else cut + 1
    chunks.append(text[start:stop])
    start = stop
  batches = [chunks[i:i + 16] for i in range(0, len(chunks), 16)]
  encoded = []
  for batch in tqdm(batches, desc="tokenizing", unit="x16MB", disable=len(batches) < 2):
    encoded.extend(tokenizer.encode_batch(batch))
  return np.concatenate(encoded)


@dataclasses.dataclass
class TokenData:
  """The train and val token arrays (uint16 memmaps) of a corpus, with their tokenizer."""
  train: np.ndarray
  val: np.ndarray
  tokenizer: object
  cache_dir: str

  def split(self, name: str) -> np.ndarray:
    return self.train if name == "train" else self.val


def prepare(config) -> TokenData:
  """Tokenizes the corpus once into uint16 files, or reuses the cache; checks both splits' sizes."""
  kind = resolve_tokenizer(config)
  tokenizer = get_tokenizer(kind, config.tokenizer_path)
  text, raw = read_corpus(config.input_file)
  source = config.input_file or DEFAULT_CORPUS
  key = hashlib.sha256(raw + f"|{kind}|{config.train_split}|{CACHE_VERSION}".encode()).hexdigest()
  stem = os.path.splitext(os.path.basename(source))[0].strip("<>") or "corpus"
  cache_dir = os.path.join(config.out_dir, "token_cache", f"{stem}-{kind}-{key[:16]}")
  meta_path = os.path.join(cache_dir, "meta.json")
  problem = _cache_problem(cache_dir, meta_path)
  if problem and os.path.isfile(meta_path):
    print(f"note: the token cache {cache_dir} is damaged ({problem}); tokenizing the corpus again.",
          file=sys.stderr, flush=True)
  if problem:
    tokens = _encode(tokenizer, text)
    n_train = int(len(tokens) * config.train_split)
    os.makedirs(cache_dir, exist_ok=True)
    for name, part in (("train", tokens[:n_train]), ("val", tokens[n_train:])):
      _atomic_write(os.path.join(cache_dir, f"{name}.bin"), part.astype(np.uint16).tobytes())
    meta = dict(source=source, tokenizer=kind, train_tokens=n_train,
                val_tokens=len(tokens) - n_train, sha256=key,
                fingerprints={name: _fingerprint(os.path.join(cache_dir, f"{name}.bin"))
                              for name in ("train", "val")})
    _atomic_write(meta_path, json.dumps(meta, indent=2).encode())
  data = TokenData(
      train=np.memmap(os.path.join(cache_dir, "train.bin"), dtype=np.uint16, mode="r"),
      val=np.memmap(os.path.join(cache_dir, "val.bin"), dtype=np.uint16, mode="r"),
      tokenizer=tokenizer, cache_dir=cache_dir)
  for name in ("train", "val"):
    n = len(data.split(name))
    if n < config.block_size + 1:
      raise DataError(
          f"config field 'input_file': {source!r} gives only {n} {name} tokens "
          f"({kind} tokenizer, train_split={config.train_split}), fewer than block_size + 1 = "
          f"{config.block_size + 1}. Fix: use more text, or a smaller --config.block_size.")
  return data


def _fingerprint(path: str, span: int = 1 << 20) -> str:
  """sha256 of a token file's size, first and last MiB: cheap at any size, and it catches a
  truncated, extended or overwritten-at-either-end file."""
  digest = hashlib.sha256(str(os.path.getsize(path)).encode())
  with open(path, "rb") as f:
    digest.update(f.read(span))
    f.seek(max(0, os.path.getsize(path) - span))
    digest.update(f.read(span))
  return digest.hexdigest()


def _cache_problem(cache_dir: str, meta_path: str) -> str | None:
  """Why the token cache cannot be used as it is (None: it can): missing, or its files disagree
  with the lengths and fingerprints its meta.json recorded."""
  try:
    with open(meta_path) as f:
      meta = json.load(f)
    for name in ("train", "val"):
      path = os.path.join(cache_dir, f"{name}.bin")
      if os.path.getsize(path) != 2 * meta[f"{name}_tokens"]:
        return f"{name}.bin holds {os.path.getsize(path) // 2:,} tokens, not {meta[f'{name}_tokens']:,}"
      if _fingerprint(path) != meta["fingerprints"][name]:
        return f"{name}.bin differs from what was written"
  except (OSError, ValueError, KeyError, TypeError) as e:
    return f"{type(e).__name__}: {e}"
  return None


def _atomic_write(path: str, payload: bytes) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(payload)
  os.replace(tmp, path)


def windows(tokens: np.ndarray, offsets: np.ndarray, length: int) -> np.ndarray:
  """tokens[o : o + length] for every offset, as int32: shape offsets.shape + (length,)."""
  return np.asarray(tokens[offsets[..., None] + np.arange(length)], dtype=np.int32)


def train_batch(tokens: np.ndarray, seed: int, step: int, micro_batches: int, batch_size: int,
                block_size: int, rows: slice = slice(None)) -> np.ndarray:
  """The training windows of `step`: (micro_batches, batch_size, block_size + 1), rows `rows` only.

  Offsets depend only on (seed, step), so every process draws the same global batch.
  """
  rng = np.random.default_rng([seed, step])
  offsets = rng.integers(0, len(tokens) - block_size, size=(micro_batches, batch_size))
  return windows(tokens, offsets[:, rows], block_size + 1)


def eval_batch(tokens: np.ndarray, seed: int, index: int, batch_size: int, block_size: int,
               rows: slice = slice(None)) -> np.ndarray:
  """Evaluation batch `index`: the same windows at every evaluation, so losses are comparable."""
  rng = np.random.default_rng([seed, _EVAL_STREAM, index])
  offsets = rng.integers(0, len(tokens) - block_size, size=(1, batch_size))
  return windows(tokens, offsets[:, rows], block_size + 1)
