"""Tokenizers: UTF-8 bytes, GPT-2 BPE (tiktoken) and any Hugging Face `tokenizer.json`.

Each one has `name`, `n_vocab`, `eot_id` (the end-of-text id that separates documents),
`encode(text) -> np.ndarray`, `encode_batch(texts)` and `decode(ids)`, plus `spec()`: a small
JSON-able dict that names it exactly (kind, vocabulary, end-of-text id and, for a tokenizer.json,
its sha256), recorded in a data directory's meta.json and a run directory's data.json so a run
knows, and checks, the tokenizer it was trained with. No JAX here: prepare's worker processes
import this module.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import tiktoken

from gptjax import files
from gptjax.config import GPT2_VOCAB_SIZE
from gptjax.data.shards import VAL_BYTES
from gptjax.errors import DataError, DiskFullError

GPT2_TIKTOKEN_ENV = "GPTJAX_GPT2_TIKTOKEN"
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"
# End-of-text tokens looked for in a tokenizer.json, in this order (GPT-2/NeoX, Llama, T5, ...).
HF_EOT_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "[SEP]")


def smallest_dtype(n_vocab: int) -> np.dtype:
  """uint16 while every id fits in it, uint32 beyond."""
  return np.dtype(np.uint16 if n_vocab <= 1 << 16 else np.uint32)


class ByteTokenizer:
  """UTF-8 bytes as tokens (vocab 256): any language, any text, nothing to download.

  Byte 255 never occurs in UTF-8, so it is the end-of-text id; it decodes to "<|endoftext|>".
  """
  name = "bytes"
  n_vocab = 256
  eot_id = 255

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)

  def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
    return [self.encode(text) for text in texts]

  def decode(self, tokens) -> str:
    """Never fails: ids past 255 (padding rows) are dropped, cut multi-byte characters become U+FFFD."""
    data = bytes(int(t) for t in tokens if 0 <= int(t) < 256)
    return EOT.join(part.decode("utf-8", errors="replace") for part in data.split(b"\xff"))

  def spec(self) -> dict:
    return dict(kind="bytes", vocab_size=self.n_vocab, eot_id=self.eot_id)

  def byte_lengths(self) -> np.ndarray:
    """UTF-8 bytes each id stands for: one, none for the end-of-text id."""
    lengths = np.ones(self.n_vocab, np.int64)
    lengths[self.eot_id] = 0
    return lengths


class Gpt2Tokenizer:
  """GPT-2 BPE through tiktoken (vocab 50257; id 50256 is <|endoftext|>)."""
  name = "gpt2"
  n_vocab = GPT2_VOCAB_SIZE
  eot_id = GPT2_VOCAB_SIZE - 1

  def __init__(self, encoding: tiktoken.Encoding):
    self.encoding = encoding

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self.encoding.encode_ordinary(text), dtype=np.uint16)

  def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
    return [np.asarray(t, dtype=np.uint16) for t in self.encoding.encode_ordinary_batch(texts)]

  def decode(self, tokens) -> str:
    return self.encoding.decode([int(t) for t in tokens if 0 <= int(t) < self.n_vocab])

  def spec(self) -> dict:
    return dict(kind="gpt2", vocab_size=self.n_vocab, eot_id=self.eot_id)

  def byte_lengths(self) -> np.ndarray:
    """UTF-8 bytes each id stands for (its BPE bytes), none for <|endoftext|>; made once."""
    if getattr(self, "_byte_lengths", None) is None:
      lengths = [len(self.encoding.decode_single_token_bytes(i)) for i in range(self.eot_id)]
      self._byte_lengths = np.asarray(lengths + [0], np.int64)
    return self._byte_lengths


class HfTokenizer:
  """A Hugging Face `tokenizer.json` (the `tokenizers` package): bring your own vocabulary.

  Text is encoded without the tokenizer's post-processing (no BOS/EOS added per call); documents
  are separated by `eot_id`, found among HF_EOT_CANDIDATES or named with `eot_token`.
  """
  name = "hf"

  def __init__(self, path: str, eot_token: str = "auto"):
    try:
      from tokenizers import Tokenizer
    except ImportError as e:  # an install requirement, but say so if it went missing
      raise DataError(f"tokenizer {path!r}: the `tokenizers` package is not installed. Fix: "
                      f"pip install tokenizers.") from e
    if not os.path.isfile(path):
      raise DataError(f"tokenizer {path!r} does not exist. Fix: give the path of a Hugging Face "
                      f"tokenizer.json, or bytes / gpt2.")
    try:
      self.tokenizer = Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises a bare Exception on a malformed file
      raise DataError(f"tokenizer {path!r} is not a Hugging Face tokenizer.json ({e}). Fix: save "
                      f"one with tokenizer.save(path) or take it from a model's directory.") from e
    self.path = path
    with open(path, "rb") as f:
      self.sha256 = hashlib.sha256(f.read()).hexdigest()
    self.n_vocab = self.tokenizer.get_vocab_size(with_added_tokens=True)
    self.eot_token, self.eot_id = self._find_eot(eot_token)

  def _find_eot(self, eot_token: str) -> tuple[str | None, int | None]:
    if eot_token == "none":
      return None, None
    candidates = HF_EOT_CANDIDATES if eot_token == "auto" else (eot_token,)
    for token in candidates:
      token_id = self.tokenizer.token_to_id(token)
      if token_id is not None:
        return token, token_id
    if eot_token != "auto":
      raise DataError(f"--eot_token={eot_token!r} is not a token of {self.path!r}. Fix: name one "
                      f"of its special tokens, or --eot_token=none to join documents without one.")
    raise DataError(f"tokenizer {self.path!r} has none of the end-of-text tokens "
                    f"{', '.join(HF_EOT_CANDIDATES)}. Fix: name its end-of-text token with "
                    f"--eot_token=<token>, or --eot_token=none to join documents without one.")

  def encode(self, text: str) -> np.ndarray:
    ids = self.tokenizer.encode(text, add_special_tokens=False).ids
    return np.asarray(ids, dtype=smallest_dtype(self.n_vocab))

  def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
    dtype = smallest_dtype(self.n_vocab)
    return [
        np.asarray(e.ids, dtype=dtype)
        for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)
    ]

  def decode(self, tokens) -> str:
    return self.tokenizer.decode([int(t) for t in tokens if 0 <= int(t) < self.n_vocab],
                                 skip_special_tokens=False)

  def spec(self) -> dict:
    return dict(kind="hf",
                vocab_size=self.n_vocab,
                eot_id=self.eot_id,
                eot_token=self.eot_token,
                sha256=self.sha256,
                path=os.path.abspath(self.path))


# The flag that names a GPT-2 ranks file, by default training's (gptjax.prepare and gptjax.sample
# have --tokenizer_path).
CONFIG_FLAG = "--config.tokenizer_path"


def gpt2_encoding(tokenizer_path: str = "", flag: str = CONFIG_FLAG) -> tiktoken.Encoding:
  """GPT-2's BPE: from `tokenizer_path`, else $GPTJAX_GPT2_TIKTOKEN, else tiktoken's cache/download.
  `flag`: the running command's flag for `tokenizer_path`, which the errors name."""
  path = tokenizer_path or os.environ.get(GPT2_TIKTOKEN_ENV, "")
  if path:
    if not os.path.isfile(path):
      source = flag if tokenizer_path else f"${GPT2_TIKTOKEN_ENV}"
      raise DataError(f"{source}: GPT-2 BPE file {path!r} does not exist. Fix: point {source} at "
                      f"a gpt2.tiktoken ranks file (openai/whisper's assets/gpt2.tiktoken).")
    from tiktoken.load import load_tiktoken_bpe
    try:
      ranks = load_tiktoken_bpe(path)
    except Exception as e:
      raise DataError(f"GPT-2 BPE file {path!r} is not a .tiktoken ranks file ({e}).") from e
    return tiktoken.Encoding("gpt2",
                             pat_str=GPT2_PATTERN,
                             mergeable_ranks=ranks,
                             special_tokens={EOT: len(ranks)})
  try:
    return tiktoken.get_encoding("gpt2")
  except Exception as e:  # offline and not cached: tiktoken raises a requests/IO error
    raise DataError(
        "GPT-2 BPE is not available: tiktoken could not load or download 'gpt2' "
        f"({type(e).__name__}). Fix: with network, run the command once online (tiktoken keeps "
        f"the ranks); offline, pass {flag}=/path/to/gpt2.tiktoken (openai/whisper's "
        f"assets/gpt2.tiktoken) or set ${GPT2_TIKTOKEN_ENV}" +
        ("; or train a byte-level preset that needs no tokenizer file, e.g. --config=tiny_char"
         if flag == CONFIG_FLAG else "") + ".") from e


def get_tokenizer(kind: str,
                  tokenizer_path: str = "",
                  eot_token: str = "auto",
                  flag: str = CONFIG_FLAG):
  """The tokenizer `kind` names: "bytes", "gpt2" (ranks from `tokenizer_path`, see gpt2_encoding)
  or the path of a Hugging Face tokenizer.json. Resolve "auto" with config.resolve_tokenizer."""
  if kind == "bytes":
    return ByteTokenizer()
  if kind == "gpt2":
    return Gpt2Tokenizer(gpt2_encoding(tokenizer_path, flag))
  return HfTokenizer(kind, eot_token)


def from_spec(spec: dict,
              hf_path: str | None = None,
              tokenizer_path: str = "",
              flag: str = CONFIG_FLAG):
  """The tokenizer a spec() names; a tokenizer.json from `hf_path` (else the recorded path), which
  must have the recorded sha256."""
  if spec["kind"] != "hf":
    return get_tokenizer(spec["kind"], tokenizer_path, flag=flag)
  path = hf_path or spec["path"]
  tokenizer = HfTokenizer(path, spec.get("eot_token") or "none")
  if tokenizer.sha256 != spec["sha256"]:
    raise DataError(f"tokenizer {path!r} differs from the one the tokens were made with (sha256 "
                    f"{tokenizer.sha256[:12]}, recorded {spec['sha256'][:12]}). Fix: use the "
                    f"original tokenizer.json, or prepare the data again with this one.")
  return tokenizer


def same_tokenizer(a: dict, b: dict) -> bool:
  """Whether two spec()s name the same tokenizer (paths may differ; contents may not)."""
  keys = ("kind", "vocab_size", "eot_id", "sha256")
  return all(a.get(key) == b.get(key) for key in keys)


def describe(spec: dict) -> str:
  """A spec in a few words, for messages: "gpt2 (vocab 50257)", "tokenizer.json sha256 ab12..."."""
  if spec["kind"] == "hf":
    return (f"{os.path.basename(spec['path'])} (vocab {spec['vocab_size']}, sha256 "
            f"{spec['sha256'][:12]})")
  return f"{spec['kind']} (vocab {spec['vocab_size']})"


def text_bytes(tokenizer, tokens) -> int:
  """UTF-8 bytes of the text `tokens` stand for (bits per byte divides by them); the end-of-text
  separator stands for none.

  Byte-level tokenizers (bytes, GPT-2's BPE) add up each token's bytes: exact, one numpy pass. A
  tokenizer.json decodes the tokens, a million at a time (a character cut at a chunk's edge can
  count U+FFFD's 3 bytes instead of its own).
  """
  tokens = np.asarray(tokens)
  if isinstance(tokenizer, (ByteTokenizer, Gpt2Tokenizer)):
    return int(tokenizer.byte_lengths()[tokens].sum())
  chunk = 1 << 20
  kept = tokens if tokenizer.eot_id is None else tokens[tokens != tokenizer.eot_id]
  return sum(
      len(tokenizer.decode(kept[start:start + chunk]).encode("utf-8"))
      for start in range(0, len(kept), chunk))


def _fingerprint(tokens: np.ndarray, tokenizer) -> str:
  """What a val_bytes.json count belongs to: the tokenizer, the split's length, its ends."""
  edge = 1 << 20
  digest = hashlib.sha256(json.dumps(tokenizer.spec(), sort_keys=True).encode())
  digest.update(f"{len(tokens)}".encode())
  digest.update(np.ascontiguousarray(tokens[:edge]).tobytes())
  digest.update(np.ascontiguousarray(tokens[-edge:]).tobytes())
  return digest.hexdigest()


def val_bytes(token_data) -> int:
  """UTF-8 bytes of the text the validation tokens stand for: counted once per data set and kept
  in <data dir>/val_bytes.json (counted again, and not kept, where the directory is read-only)."""
  tokens = token_data.val
  key = _fingerprint(tokens, token_data.tokenizer)
  path = os.path.join(token_data.cache_dir, VAL_BYTES)
  try:
    with open(path) as f:
      cached = json.load(f)
    if cached.get("key") == key:
      return int(cached["bytes"])
  except (OSError, ValueError, KeyError):
    pass
  counted = text_bytes(token_data.tokenizer, tokens)
  try:
    files.write_json(path, dict(key=key, tokens=len(tokens), bytes=counted))
  except (OSError, DiskFullError):  # read-only or full: the count is cheap enough to repeat
    pass
  return counted


def val_tokens_per_byte(token_data) -> float | None:
  """Validation tokens per byte of their text: bits per byte = loss (nats) / ln 2 * this."""
  counted = val_bytes(token_data)
  return len(token_data.val) / counted if counted else None
