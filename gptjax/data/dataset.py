"""The run's token store: the config's corpus, tokenized once, checked, and read through memmaps.

  data = dataset.open_tokens(config)   # data.train, data.val (memmaps), data.tokenizer

A config names its text one of two ways: `data_dir`, a directory of token shards written by
`python -m gptjax.prepare` (or nanoGPT's train.bin / val.bin), or `input_file` (the embedded
default corpus when empty), which gptjax.prepare's code tokenizes once into
<out_dir>/token_cache/<name>-<tokenizer>-<key>/ and reuses while the text and tokenizer are
unchanged. Either way the tokenizer is resolved from the config and the data once, built once, and
checked once against the config (tokenizer, vocab_size, block_size) before anything is compiled.
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
from tqdm import tqdm

from gptjax import store
from gptjax.config import GPT2_VOCAB_SIZE, resolve_tokenizer
from gptjax.data import prepare as prepare_lib
from gptjax.data import shards
from gptjax.data import tokenizer as tokenizer_lib
from gptjax.errors import DataError

DEFAULT_CORPUS = "<python-stdlib>"  # the input_file="" corpus, see default_corpus_text()
CACHE_VERSION = 4  # 3: token shards written by gptjax.prepare; 4: sources.SPLIT_RULE 2
RUN_DATA = "data.json"  # in a run directory: the tokenizer and data it was trained with
_SCAN_CHUNK = 1 << 24  # tokens read at a time when scanning nanoGPT's files for their largest id


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


def _check_input_file(input_file: str) -> None:
  """A clear error for an input_file that is missing, a directory or empty."""
  if os.path.isdir(input_file):
    raise DataError(f"config field 'input_file': {input_file!r} is a directory, not a text file. "
                    f"Fix: prepare it with `python -m gptjax.prepare --input={input_file} "
                    f"--tokenizer=... --out_dir=data/x` and train with --config.data_dir=data/x.")
  if not os.path.isfile(input_file):
    raise DataError(f"config field 'input_file': {input_file!r} does not exist. Fix: give the path "
                    f"of a UTF-8 text file, or leave it empty to train on the default corpus.")
  with open(input_file, "rb") as f:
    head = f.read(1 << 20)
  if not head.strip() and os.path.getsize(input_file) <= len(head):
    raise DataError(f"config field 'input_file': {input_file!r} is empty. Fix: give a file with "
                    f"text in it.")


def check_sources(config) -> None:
  """The files the config names, checked before a tokenizer is loaded or anything compiled:
  input_file is a text file with something in it, data_dir a directory."""
  if config.input_file:
    _check_input_file(config.input_file)
  if config.data_dir:
    _check_data_dir(config.data_dir)


def _check_data_dir(directory: str) -> None:
  where = f"config field 'data_dir': {directory!r}"
  stem = os.path.splitext(os.path.basename(os.path.normpath(directory)))[0] or "corpus"
  if os.path.isfile(directory):
    raise DataError(f"{where} is a file, not a directory of token shards. Fix: train on its text "
                    f"with --config.input_file={directory} instead of --config.data_dir, or "
                    f"prepare it with `python -m gptjax.prepare --input={directory} "
                    f"--tokenizer=bytes --out_dir=data/{stem}` and train with "
                    f"--config.data_dir=data/{stem}.")
  if not os.path.isdir(directory):
    raise DataError(f"{where} does not exist. Fix: prepare it with `python -m gptjax.prepare "
                    f"--input=<your text> --tokenizer=gpt2 --out_dir={directory}`, or give the "
                    f"directory that holds train.bin and val.bin.")


def read_corpus(input_file: str) -> tuple[str, bytes]:
  """(text, raw bytes) of `input_file` (or of the default corpus when it is ""), whole in memory:
  for tools that need the text itself (tools/bench_nanogpt.py); training streams it instead."""
  if not input_file:
    text = default_corpus_text()
    return text, text.encode("utf-8")
  _check_input_file(input_file)
  with open(input_file, "rb") as f:
    raw = f.read()
  try:
    return raw.decode("utf-8"), raw
  except UnicodeDecodeError as e:
    raise DataError(f"config field 'input_file': {input_file!r} is not UTF-8 (byte {e.start}: "
                    f"{raw[e.start:e.start + 1]!r}). Fix: convert it, e.g. `iconv -f latin1 -t "
                    f"utf-8 {input_file} > {input_file}.utf8`.") from e


def _file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(1 << 24):
      digest.update(block)
  return digest.hexdigest()


@dataclasses.dataclass
class TokenData:
  """The train and val tokens of a corpus (memmaps: np.memmap or TokenShards), its tokenizer."""
  train: np.ndarray
  val: np.ndarray
  tokenizer: object
  cache_dir: str  # the data directory the tokens are read from

  def split(self, name: str) -> np.ndarray:
    return self.train if name == "train" else self.val


def open_tokens(config) -> TokenData:
  """The config's tokens: its data_dir, or its input_file (or the default corpus) tokenized once
  into the token cache by gptjax.prepare; checked against the config (tokenizer, vocab_size,
  block_size).

  Raises:
    DataError: a missing, empty, incomplete, truncated or mismatched corpus or data directory.
  """
  if config.data_dir:
    data = open_data_dir(config.data_dir, config)
  else:
    data = _open_token_cache(config)
  source = f"data_dir {config.data_dir!r}" if config.data_dir else (
      f"input_file {config.input_file or DEFAULT_CORPUS!r}")
  sizes = {name: len(data.split(name)) for name in shards.SPLITS}
  short = [name for name, n in sizes.items() if n < config.block_size + 1]
  if short:
    raise DataError(
        f"config field '{'data_dir' if config.data_dir else 'input_file'}': {source} gives only " +
        " and ".join(f"{sizes[name]} {name}" for name in short) + f" tokens ({data.tokenizer.name}"
        f" tokenizer), fewer than block_size + 1 = {config.block_size + 1}. Fix: " +
        _too_few_tokens_fix(config, sizes))
  return data


def _too_few_tokens_fix(config, sizes: dict[str, int]) -> str:
  """The fixes that work for a corpus whose splits are shorter than a block: a block that fits
  both, another split of input_file's text, more text."""
  fixes, total = [], sum(sizes.values())
  if min(sizes.values()) >= 2:
    fixes.append(f"a block that fits both splits, --config.block_size={min(sizes.values()) - 1}")
  if not config.data_dir and total >= 3 * (config.block_size + 1):  # val: two blocks' worth
    share = round(1 - 2 * (config.block_size + 1) / total, 3)
    fixes.append(f"a larger validation share, --config.train_split={share}")
  return ", or ".join(fixes + ["more text"]) + "."


def _open_token_cache(config) -> TokenData:
  """input_file (or the default corpus) prepared into <out_dir>/token_cache/<name>-<tokenizer>-<key>."""
  tokenizer = tokenizer_lib.get_tokenizer(resolve_tokenizer(config), config.tokenizer_path)
  texts = None
  if config.input_file:
    _check_input_file(config.input_file)
    content = _file_sha256(config.input_file)
  else:
    texts = (default_corpus_text(),)
    content = hashlib.sha256(texts[0].encode("utf-8")).hexdigest()
  spec = json.dumps(tokenizer.spec(), sort_keys=True)
  key = hashlib.sha256(
      f"{content}|{spec}|{config.train_split}|{CACHE_VERSION}".encode()).hexdigest()
  source = config.input_file or DEFAULT_CORPUS
  stem = os.path.splitext(os.path.basename(source))[0].strip("<>") or "corpus"
  # np.memmap reads it: on local disk even when the run directory is in a bucket.
  cache_dir = os.path.join(store.local_path(config.out_dir), "token_cache",
                           f"{stem}-{tokenizer.name}-{key[:16]}")
  meta = None
  try:
    meta = shards.read_meta(cache_dir)
    problem = "no meta.json" if meta is None else shards.shard_problem(cache_dir, meta)
  except DataError as e:
    problem = str(e)
  if problem:  # several processes of one run may prepare it at once: prepare() copes
    if meta is not None:
      print(
          f"note: the token cache {cache_dir} is damaged ({problem}); tokenizing the corpus "
          f"again.",
          file=sys.stderr,
          flush=True)
    prepare_lib.prepare(prepare_lib.Options(inputs=[config.input_file] if config.input_file else [],
                                            texts=texts,
                                            tokenizer=resolve_tokenizer(config),
                                            tokenizer_path=config.tokenizer_path,
                                            out_dir=cache_dir,
                                            val_fraction=1 - config.train_split),
                        tokenizer=tokenizer)
  return open_data_dir(cache_dir, config, tokenizer=tokenizer)


def open_data_dir(directory: str, config, tokenizer=None) -> TokenData:
  """A gptjax.prepare directory (meta.json) or nanoGPT's train.bin / val.bin, checked: complete,
  not truncated, a validation split, a tokenizer that agrees with the config, ids < vocab_size."""
  where = f"config field 'data_dir': {directory!r}"
  _check_data_dir(directory)
  meta = shards.read_meta(directory)
  if meta is None:
    return _open_nanogpt_dir(directory, config, where)
  problem = shards.shard_problem(directory, meta)
  if problem:
    raise DataError(f"{where}: {problem}. Fix: prepare it again (`python -m gptjax.prepare ... "
                    f"--out_dir={directory} --force`).")
  spec = meta["tokenizer"]
  _check_tokenizer(config, spec, where)
  if tokenizer is None:
    hf_copy = os.path.join(directory, "tokenizer.json")
    tokenizer = tokenizer_lib.from_spec(spec, hf_copy if os.path.isfile(hf_copy) else None,
                                        config.tokenizer_path)
  largest = max(s["max_token"] for split in shards.SPLITS for s in meta["splits"][split]["shards"])
  _check_vocab(config, max(spec["vocab_size"] - 1, largest), where, tokenizer_lib.describe(spec))
  arrays = [
      shards.open_tokens(
          [os.path.join(directory, s["file"])
           for s in meta["splits"][split]["shards"]], meta["dtype"])
      for split in shards.SPLITS
  ]
  return TokenData(train=arrays[0], val=arrays[1], tokenizer=tokenizer, cache_dir=directory)


def _open_nanogpt_dir(directory: str, config, where: str) -> TokenData:
  paths = [os.path.join(directory, name) for name in shards.NANOGPT_FILES]
  present = [os.path.isfile(path) for path in paths]
  if not any(present):
    partial = shards.staging_dirs(directory) or any(
        shards.is_shard_file(name) for name in os.listdir(directory))
    raise DataError(f"{where} " + ("holds an unfinished gptjax.prepare (no meta.json)" if partial
                                   else "holds no token shards (no meta.json, no train.bin)") +
                    f". Fix: run `python -m gptjax.prepare --input=... --tokenizer=... "
                    f"--out_dir={directory}` (again) until it finishes.")
  if not present[1]:
    raise DataError(f"{where} has train.bin but no val.bin: no validation split. Fix: write one "
                    f"as nanoGPT's prepare.py does, or prepare the text with `python -m "
                    f"gptjax.prepare --input=... --tokenizer=gpt2 --out_dir=...`.")
  if os.path.isfile(os.path.join(directory, "meta.pkl")):
    raise DataError(f"{where} holds nanoGPT's meta.pkl: a character vocabulary of its own, which "
                    f"gptjax cannot decode. Fix: prepare the text with `python -m gptjax.prepare "
                    f"--input=input.txt --tokenizer=bytes --out_dir=...`.")
  for path in paths:
    if os.path.getsize(path) < 2:
      raise DataError(f"{where}: {path!r} is empty" +
                      (": no validation split" if "val" in os.path.basename(path) else "") +
                      ". Fix: write it again (nanoGPT's prepare.py), or prepare the text with "
                      "`python -m gptjax.prepare --input=... --tokenizer=gpt2 --out_dir=...`.")
    if os.path.getsize(path) % 2:
      raise DataError(f"{where}: {path!r} is truncated ({os.path.getsize(path):,} bytes, not a "
                      f"whole number of uint16 tokens). Fix: write it again.")
  # Without a meta.json the ids are GPT-2's, as nanoGPT reads them without its meta.pkl; another
  # tokenizer only where the config names it (not "auto").
  if config.tokenizer == "auto" and config.vocab_size < GPT2_VOCAB_SIZE:
    raise DataError(f"{where} holds nanoGPT's train.bin/val.bin without gptjax's meta.json: "
                    f"GPT-2 token ids, as nanoGPT reads them without its meta.pkl, but vocab_size "
                    f"is {config.vocab_size} (a byte-level preset). Fix: train a GPT-2 BPE preset "
                    f"on it, e.g. --config=tiny, or, if the files hold byte ids, say so with "
                    f"--config.tokenizer=bytes.")
  kind = "gpt2" if config.tokenizer == "auto" else config.tokenizer
  tokenizer = tokenizer_lib.get_tokenizer(kind, config.tokenizer_path)
  largest = max(_largest_id(path) for path in paths)
  if largest >= tokenizer.n_vocab:
    raise DataError(f"{where}: its ids reach {largest}, past the {kind} tokenizer's "
                    f"{tokenizer.n_vocab}: they are not {kind} ids. Fix: --config.tokenizer=auto "
                    f"(GPT-2 ids, as nanoGPT reads them) with a GPT-2 BPE preset, e.g. "
                    f"--config=tiny.")
  _check_vocab(config, max(tokenizer.n_vocab - 1, largest), where,
               tokenizer_lib.describe(tokenizer.spec()))
  arrays = [np.memmap(path, dtype=np.uint16, mode="r") for path in paths]
  return TokenData(train=arrays[0], val=arrays[1], tokenizer=tokenizer, cache_dir=directory)


def _largest_id(path: str) -> int:
  """The largest uint16 id in a file, read in chunks with plain reads (not a memmap, whose pages
  would stay in this process's resident memory)."""
  largest, size = 0, os.path.getsize(path) // 2
  with open(path, "rb") as f, tqdm(total=size,
                                   unit="tok",
                                   unit_scale=True,
                                   file=sys.stderr,
                                   desc=f"checking {os.path.basename(path)}",
                                   disable=None if size > _SCAN_CHUNK else True) as bar:
    while len(chunk := np.fromfile(f, np.uint16, _SCAN_CHUNK)):
      largest = max(largest, int(chunk.max()))
      bar.update(len(chunk))
  return largest


def _check_tokenizer(config, spec: dict, where: str) -> None:
  wanted = config.tokenizer
  if wanted == "auto":
    return
  if wanted in ("bytes", "gpt2"):
    same = spec["kind"] == wanted
  else:
    same = spec["kind"] == "hf" and os.path.isfile(wanted) and _file_sha256(
        wanted) == spec["sha256"]
  if not same:
    raise DataError(f"{where} was prepared with the tokenizer {tokenizer_lib.describe(spec)}, but "
                    f"config field 'tokenizer' is {wanted!r}. Fix: --config.tokenizer=auto (the "
                    f"data's own), or prepare the data with `python -m gptjax.prepare ... "
                    f"--tokenizer={wanted}`.")


def _check_vocab(config, largest_id: int, where: str, described: str) -> None:
  if largest_id >= config.vocab_size:
    needed = -(-(largest_id + 1) // 64) * 64
    raise DataError(f"config field 'vocab_size': {config.vocab_size} is too small for {where}: "
                    f"its tokenizer {described} and ids reach {largest_id}. Fix: "
                    f"--config.vocab_size={needed} (>= {largest_id + 1}, padded to 64).")


def record_run_data(run_dir: str,
                    token_data: TokenData,
                    resuming: bool,
                    write: bool = True) -> None:
  """Writes <run_dir>/data.json (the tokenizer's spec and the data directory), and the run's copy
  of a Hugging Face tokenizer.json, so that gptjax.sample decodes with the run's own tokenizer.
  Resuming with a different tokenizer is an error (checked before anything is written)."""
  spec = token_data.tokenizer.spec()
  path = os.path.join(run_dir, RUN_DATA)
  if resuming and store.isfile(path):
    recorded = json.loads(store.read_text(path))["tokenizer"]
    if not tokenizer_lib.same_tokenizer(recorded, spec):
      raise DataError(f"run directory {run_dir!r} was trained with the tokenizer "
                      f"{tokenizer_lib.describe(recorded)}; this run's data gives "
                      f"{tokenizer_lib.describe(spec)}. Fix: resume with data made by the run's "
                      f"tokenizer, or train into a new directory with --config.model_name=<new>.")
  if not write:  # another process of a multi-host run writes it
    return
  if spec["kind"] == "hf":
    store.copy_file(token_data.tokenizer.path, os.path.join(run_dir, "tokenizer.json"))
  store.write_text(
      path,
      json.dumps(dict(tokenizer=spec, data_dir=os.path.abspath(token_data.cache_dir)), indent=2))


def run_tokenizer(run_dir: str, config, tokenizer_path: str = "", flag: str = "--tokenizer_path"):
  """The tokenizer a run was trained with: from its data.json (and its tokenizer.json copy), or,
  for runs from before data.json, the one its config names. GPT-2's ranks come from
  `tokenizer_path`, else the run's own config.tokenizer_path (`flag`: the command's flag for it)."""
  path = os.path.join(run_dir, RUN_DATA)
  tokenizer_path = tokenizer_path or config.get("tokenizer_path", "")
  if not store.isfile(path):
    return tokenizer_lib.get_tokenizer(resolve_tokenizer(config), tokenizer_path, flag=flag)
  spec = json.loads(store.read_text(path))["tokenizer"]
  hf_copy = os.path.join(run_dir, "tokenizer.json")
  if store.is_url(hf_copy) and store.isfile(hf_copy):  # the tokenizer library reads local files
    local = os.path.join(store.local_path(run_dir), "tokenizer.json")
    os.makedirs(os.path.dirname(local), exist_ok=True)
    with open(local, "wb") as f:
      f.write(store.read_bytes(hf_copy))
    hf_copy = local
  return tokenizer_lib.from_spec(spec, hf_copy if os.path.isfile(hf_copy) else None, tokenizer_path,
                                 flag)
