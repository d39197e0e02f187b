"""gptjax.prepare and data_dir: token shards against tokenizers run directly, the document-level
split, memmapped batches against in-memory ones, nanoGPT's bins, resume, and every bad input."""

from __future__ import annotations

import json
import os
import socket
import sys
import types

import numpy as np
import pytest
import tiktoken
from tiktoken.load import load_tiktoken_bpe
from tiktoken_ext.openai_public import r50k_pat_str

from gptjax import presets
from gptjax.config import validate
from gptjax.data import batches, dataset, shards
from gptjax.data import prepare as prepare_lib
from gptjax.data import tokenizer as tokenizer_lib
from gptjax.errors import ConfigError, DataError
from gptjax.training.loop import train

from conftest import GPT2_TIKTOKEN, TINY_SHAKESPEARE, assert_user_error, read_metrics, run_module

needs_gpt2 = pytest.mark.skipif(not os.path.isfile(GPT2_TIKTOKEN),
                                reason="needs ../shared/data/gpt2.tiktoken")
SHAKESPEARE = open(TINY_SHAKESPEARE, encoding="utf-8").read() if os.path.isfile(
    TINY_SHAKESPEARE) else "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 4000
DOCS = [
    f"Document {i}: " + SHAKESPEARE[i * 997:i * 997 + 300 + 150 * i] + " «ché» 日本 🎉\n"
    for i in range(12)
]


def gpt2_directly() -> tiktoken.Encoding:
  """GPT-2 BPE built here from the ranks file and tiktoken's own pattern, not through gptjax."""
  ranks = load_tiktoken_bpe(GPT2_TIKTOKEN)
  return tiktoken.Encoding("gpt2-test",
                           pat_str=r50k_pat_str,
                           mergeable_ranks=ranks,
                           special_tokens={"<|endoftext|>": 50256})


def write_docs(directory, docs, suffix=".txt"):
  directory.mkdir(parents=True, exist_ok=True)
  for i, doc in enumerate(docs):
    (directory / f"doc{i:02d}{suffix}").write_text(doc, encoding="utf-8")
  return directory


def prep(tmp_path, inputs, tokenizer="bytes", name="data", **options):
  out = tmp_path / name
  meta = prepare_lib.prepare(
      prepare_lib.Options(inputs=[str(i) for i in inputs],
                          tokenizer=str(tokenizer),
                          out_dir=str(out),
                          progress=False,
                          **options))
  return out, meta


def read_split(out, split):
  """A split's tokens read with plain numpy, not through gptjax.data."""
  with open(out / "meta.json") as f:
    meta = json.load(f)
  return np.concatenate(
      [np.fromfile(out / s["file"], meta["dtype"]) for s in meta["splits"][split]["shards"]])


def split_documents(tokens, eot):
  ends = np.flatnonzero(tokens == eot)
  assert len(ends) and ends[-1] == len(tokens) - 1  # every document ends with end-of-text
  return [list(part) for part in np.split(tokens, ends + 1)[:-1]]


def assert_whole_documents(out, expected, eot, n_val):
  """Train and val are whole documents in corpus order, each once; n_val of them in val."""
  train_docs = split_documents(read_split(out, "train"), eot)
  val_docs = split_documents(read_split(out, "val"), eot)
  assert len(val_docs) >= 1 and len(train_docs) + len(val_docs) == len(expected)
  assert n_val is None or len(val_docs) == n_val
  expected = [list(doc) + [eot] for doc in expected]
  for docs in (train_docs, val_docs):
    indices = [expected.index(doc) for doc in docs]  # ValueError: not a whole document
    assert indices == sorted(indices)
  assert sorted(expected.index(d) for d in train_docs + val_docs) == list(range(len(expected)))
  return [expected.index(d) for d in val_docs]


@needs_gpt2
def test_gpt2_shards_are_tiktoken_documents_with_a_whole_document_val_split(tmp_path):
  out, meta = prep(tmp_path, [write_docs(tmp_path / "in", DOCS)],
                   "gpt2",
                   val_fraction=0.2,
                   tokenizer_path=GPT2_TIKTOKEN)
  encoding = gpt2_directly()
  val = assert_whole_documents(out, [encoding.encode_ordinary(d) for d in DOCS], 50256, n_val=2)
  assert meta["dtype"] == "uint16" and meta["eot_id"] == 50256 and meta["vocab_size"] == 50257
  assert meta["splits"]["val"]["documents"] == 2 and meta["source"]["bytes"] == sum(
      len(d.encode()) for d in DOCS)
  again, _ = prep(tmp_path, [tmp_path / "in"],
                  "gpt2",
                  name="again",
                  val_fraction=0.2,
                  tokenizer_path=GPT2_TIKTOKEN)
  assert assert_whole_documents(again, [encoding.encode_ordinary(d) for d in DOCS], 50256, 2) == val
  other, _ = prep(tmp_path, [tmp_path / "in"],
                  "gpt2",
                  name="other",
                  val_fraction=0.2,
                  seed=1,
                  tokenizer_path=GPT2_TIKTOKEN)
  assert assert_whole_documents(other, [encoding.encode_ordinary(d) for d in DOCS], 50256, 2) != val


def test_bytes_round_trip_and_jsonl_documents(tmp_path):
  lines = [json.dumps({"text": doc, "id": i}) for i, doc in enumerate(DOCS)]
  lines.insert(3, "")  # a blank line is no document
  lines.insert(5, json.dumps({"text": ""}))  # an empty one is a counted skip
  (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
  out, meta = prep(tmp_path, [tmp_path / "docs.jsonl"], "bytes", val_fraction=0.25, task_bytes=2000)
  # 14 lines, 4 drawn for val: the blank and the empty line may be among them
  assert_whole_documents(out, [list(d.encode("utf-8")) for d in DOCS], 255, n_val=None)
  assert meta["skipped_empty_documents"] == 1
  both = np.concatenate([read_split(out, "train"), read_split(out, "val")])
  texts = tokenizer_lib.ByteTokenizer().decode(both).split("<|endoftext|>")
  assert sorted(texts[:-1]) == sorted(DOCS) and texts[-1] == ""


def hf_tokenizer_file(tmp_path, vocab_size=300):
  """A byte-level BPE trained here on the test corpus, saved as tokenizer.json."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size,
                                special_tokens=["<|endoftext|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator([SHAKESPEARE[:50_000]] + DOCS, trainer)
  path = tmp_path / "tokenizer.json"
  tokenizer.save(str(path))
  return path, tokenizer


def test_hf_tokenizer_json_round_trip(tmp_path):
  path, reference = hf_tokenizer_file(tmp_path)
  out, meta = prep(tmp_path, [write_docs(tmp_path / "in", DOCS)], path, val_fraction=0.2)
  eot = reference.token_to_id("<|endoftext|>")
  expected = [reference.encode(d, add_special_tokens=False).ids for d in DOCS]
  assert_whole_documents(out, expected, eot, n_val=2)
  assert meta["tokenizer"]["kind"] == "hf" and meta["eot_id"] == eot
  assert os.path.isfile(out / "tokenizer.json")  # the data directory carries its tokenizer
  ours = tokenizer_lib.get_tokenizer(str(path))
  assert ours.decode(reference.encode(DOCS[3]).ids) == reference.decode(
      reference.encode(DOCS[3]).ids) and "Document 3" in ours.decode(reference.encode(DOCS[3]).ids)


def test_vocabularies_beyond_65536_are_uint32(tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers
  vocab = {"[UNK]": 0, "</s>": 1, **{f"w{i}": i + 2 for i in range(70_000)}}
  tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer.save(str(tmp_path / "big.json"))
  docs = ["w69999 w1 w65536 w70", "w3 w4", "w65535 w65534 w2"]
  out, meta = prep(tmp_path, [write_docs(tmp_path / "in", docs)],
                   tmp_path / "big.json",
                   val_fraction=0.3)
  assert meta["dtype"] == "uint32" and meta["eot_id"] == 1
  assert_whole_documents(out, [tokenizer.encode(d).ids for d in docs], 1, n_val=1)


@needs_gpt2
def test_a_large_document_cut_into_tasks_tokenizes_as_one_piece(tmp_path):
  text = SHAKESPEARE[:200_000]
  write_docs(tmp_path / "in", [text, DOCS[0]])
  out, _ = prep(tmp_path, [tmp_path / "in"],
                "gpt2",
                val_fraction=0.5,
                task_bytes=10_000,
                tokenizer_path=GPT2_TIKTOKEN)
  encoding = gpt2_directly()
  assert_whole_documents(out, [encoding.encode_ordinary(text),
                               encoding.encode_ordinary(DOCS[0])],
                         50256,
                         n_val=1)
  memory, _ = prep(tmp_path, [],
                   "gpt2",
                   name="memory",
                   texts=(text, DOCS[0]),
                   val_fraction=0.5,
                   task_bytes=10_000,
                   tokenizer_path=GPT2_TIKTOKEN)
  for split in shards.SPLITS:
    np.testing.assert_array_equal(read_split(memory, split), read_split(out, split))


def test_worker_processes_write_what_one_process_writes(tmp_path, monkeypatch):
  monkeypatch.setattr(prepare_lib, "MIN_PARALLEL_BYTES", 0)
  write_docs(tmp_path / "in", DOCS * 3)
  options = dict(val_fraction=0.1, task_bytes=1500, shard_tokens=3000)
  one, meta = prep(tmp_path, [tmp_path / "in"], "bytes", name="one", num_proc=1, **options)
  two, _ = prep(tmp_path, [tmp_path / "in"], "bytes", name="two", num_proc=2, **options)
  assert len(meta["splits"]["train"]["shards"]) > 3
  assert sorted(os.listdir(one)) == sorted(os.listdir(two))
  for name in os.listdir(one):
    if name.endswith(".bin"):
      assert (one / name).read_bytes() == (two / name).read_bytes(), name


def test_memmapped_shards_give_the_in_memory_batches(tmp_path, tiny):
  write_docs(tmp_path / "in", DOCS * 2)
  out, meta = prep(tmp_path, [tmp_path / "in"], "bytes", val_fraction=0.2, shard_tokens=700)
  data = dataset.open_tokens(tiny(input_file="", data_dir=str(out), tokenizer="auto"))
  assert isinstance(data.train, shards.TokenShards) and len(data.train.arrays) > 5
  in_memory = read_split(out, "train")
  assert len(data.train) == len(in_memory)
  for seed, step in ((0, 0), (1, 7), (3, 11)):
    np.testing.assert_array_equal(batches.train_batch(data.train, seed, step, 2, 8, 64),
                                  batches.train_batch(in_memory, seed, step, 2, 8, 64))
  offsets = np.arange(0, len(in_memory) - 65, 37)  # every shard boundary is straddled
  np.testing.assert_array_equal(batches.windows(data.train, offsets, 65),
                                batches.windows(in_memory, offsets, 65))


def test_resume_on_memmapped_shards_equals_the_uninterrupted_run(tmp_path, tiny):
  path, _ = hf_tokenizer_file(tmp_path, vocab_size=250)
  out, _ = prep(tmp_path, [write_docs(tmp_path / "in", DOCS * 3)],
                path,
                val_fraction=0.2,
                shard_tokens=1000)
  common = dict(input_file="",
                data_dir=str(out),
                tokenizer="auto",
                vocab_size=320,
                max_iters=6,
                lr_decay_iters=6,
                eval_interval=3)
  train(tiny(model_name="straight", **common))
  interrupted = tiny(model_name="resumed", **{**common, "max_iters": 3})
  train(interrupted)
  interrupted.max_iters = 6
  train(interrupted)
  straight = read_metrics(os.path.join(interrupted.out_dir, "straight"))
  resumed = read_metrics(os.path.join(interrupted.out_dir, "resumed"))
  assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in straight]  # bitwise
  # The run knows its tokenizer: gptjax.sample decodes with the run's copy of tokenizer.json.
  run_dir = os.path.join(interrupted.out_dir, "resumed")
  tokenizer = dataset.run_tokenizer(run_dir, interrupted)
  assert tokenizer.name == "hf" and os.path.isfile(os.path.join(run_dir, "tokenizer.json"))
  ids = tokenizer.encode(DOCS[1])
  assert tokenizer.decode(ids) == DOCS[1]
  # Resuming it on data made by another tokenizer is an error, even with other data on purpose.
  bytes_dir, _ = prep(tmp_path, [tmp_path / "in"], "bytes", name="bytes", val_fraction=0.2)
  interrupted.data_dir, interrupted.max_iters = str(bytes_dir), 8
  interrupted.resume_with_changes = True
  with pytest.raises(DataError, match="was trained with the tokenizer tokenizer.json"):
    train(interrupted)


@needs_gpt2
def test_nanogpt_train_and_val_bins_work_as_they_are(tmp_path, tiny):
  encoding = gpt2_directly()
  directory = tmp_path / "shakespeare"  # as nanoGPT's data/shakespeare/prepare.py writes it
  directory.mkdir()
  n = int(len(SHAKESPEARE[:60_000]) * 0.9)
  for name, text in (("train.bin", SHAKESPEARE[:n]), ("val.bin", SHAKESPEARE[n:60_000])):
    np.array(encoding.encode_ordinary(text), dtype=np.uint16).tofile(directory / name)
  config = tiny(input_file="",
                data_dir=str(directory),
                tokenizer="auto",
                vocab_size=50304,
                max_iters=2,
                eval_interval=2)
  data = dataset.open_tokens(config)
  assert data.tokenizer.name == "gpt2"
  np.testing.assert_array_equal(data.val, encoding.encode_ordinary(SHAKESPEARE[n:60_000]))
  assert np.isfinite(train(config)["val_loss"])


@needs_gpt2
@pytest.mark.parametrize("case, fragments", [
    ("missing", ["data_dir", "does not exist", "python -m gptjax.prepare"]),
    ("empty", ["holds no token shards"]),
    ("unfinished", ["unfinished gptjax.prepare"]),
    ("truncated", ["train-00000.bin", "is truncated"]),
    ("no_val", ["no validation split"]),
    ("odd_bytes", ["val.bin", "truncated"]),
    ("ids_over_vocab", ["ids reach 50256", "not bytes ids", "--config.tokenizer=auto"]),
    ("vocab_over_vocab_size", ["vocab_size", "gpt2 (vocab 50257)"]),
    ("other_tokenizer", ["prepared with the tokenizer gpt2", "--config.tokenizer=auto"]),
])
def test_bad_data_dirs_are_clear_errors(tmp_path, tiny, case, fragments):
  gpt2_dir, _ = prep(tmp_path, [write_docs(tmp_path / "in", DOCS)],
                     "gpt2",
                     val_fraction=0.2,
                     tokenizer_path=GPT2_TIKTOKEN)
  directory, overrides = tmp_path / case, dict(tokenizer="auto", vocab_size=50304)
  if case == "empty":
    directory.mkdir()
  elif case == "unfinished":
    (directory / shards.STAGING).mkdir(parents=True)
    (directory / "train-00000.bin").write_bytes(b"\0\0")
  elif case == "truncated":
    directory = gpt2_dir
    os.truncate(directory / "train-00000.bin", 100)
  elif case in ("no_val", "odd_bytes", "ids_over_vocab"):
    directory.mkdir()
    np.arange(50257, dtype=np.uint16).tofile(directory / "train.bin")
    if case != "no_val":
      (directory / "val.bin").write_bytes(b"\1\0\2" if case == "odd_bytes" else b"\1\0\2\0")
    overrides = dict(tokenizer="bytes", vocab_size=256) if case == "ids_over_vocab" else overrides
  elif case == "vocab_over_vocab_size":
    directory, overrides = gpt2_dir, dict(tokenizer="auto", vocab_size=256)
  elif case == "other_tokenizer":
    directory, overrides = gpt2_dir, dict(tokenizer="bytes", vocab_size=256)
  with pytest.raises(DataError) as error:
    dataset.open_tokens(tiny(input_file="", data_dir=str(directory), **overrides))
  for fragment in fragments:
    assert fragment in str(error.value), (fragment, str(error.value))


@pytest.mark.parametrize("inputs, fragments", [
    (["nothing/*.txt"], ["matches no file"]),
    (["empty_dir"], ["is an empty directory"]),
    (["missing.txt"], ["does not exist"]),
    (["latin1.txt"], ["latin1.txt is not UTF-8 at byte 1,006"]),
    (["bad.jsonl"], ["bad.jsonl:2 is not a JSON line"]),
    (["nofield.jsonl"], ["nofield.jsonl:1 has no text field 'text'", "--text_field"]),
])
def test_bad_inputs_are_clear_errors_and_write_nothing(tmp_path, monkeypatch, inputs, fragments):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "empty_dir").mkdir()
  (tmp_path / "latin1.txt").write_bytes(b"a" * 1003 + "café".encode("latin-1"))
  (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"text": \n{"text": "b"}\n')
  (tmp_path / "nofield.jsonl").write_text('{"body": "a"}\n{"body": "b"}\n')
  write_docs(tmp_path / "ok", DOCS[:3])
  with pytest.raises(DataError) as error:
    prep(tmp_path, ["ok", *inputs], "bytes", val_fraction=0.3, task_bytes=500)
  for fragment in fragments:
    assert fragment in str(error.value), (fragment, str(error.value))
  assert not os.path.exists(tmp_path / "data" / "meta.json")
  assert not shards.staging_dirs(tmp_path / "data")


def test_a_killed_prepare_is_never_read_as_complete_and_restarts(tmp_path, tiny, monkeypatch):
  write_docs(tmp_path / "in", DOCS)
  out, _ = prep(tmp_path, [tmp_path / "in"], "bytes", val_fraction=0.2)
  before = read_split(out, "train")
  moved = []

  def killed_after_one(source, target, replace=os.replace):
    if moved:
      raise KeyboardInterrupt  # as a kill while moving the new files into place
    moved.append(target)
    replace(source, target)

  monkeypatch.setattr(shards.os, "replace", killed_after_one)
  with pytest.raises(KeyboardInterrupt):
    prep(tmp_path, [tmp_path / "in"], "bytes", val_fraction=0.2, seed=5)
  monkeypatch.undo()
  assert not os.path.exists(out / "meta.json")
  with pytest.raises(DataError, match="unfinished gptjax.prepare"):
    dataset.open_tokens(tiny(input_file="", data_dir=str(out)))
  killed = out / f"{shards.STAGING}-{socket.gethostname()}-999999999"  # a pid beyond pid_max
  killed.mkdir()  # what a SIGKILL before the move leaves
  (killed / "train-00000.bin").write_bytes(b"junk")
  prep(tmp_path, [tmp_path / "in"], "bytes", val_fraction=0.2)
  np.testing.assert_array_equal(read_split(out, "train"), before)
  assert not shards.staging_dirs(out)


def test_hf_datasets_streamed_or_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
  with pytest.raises(DataError, match="pip install datasets"):
    prep(tmp_path, [], "bytes", hf_dataset="openwebtext")

  def offline(*args, **kwargs):
    raise ConnectionError("Couldn't reach 'openwebtext' on the Hub (LocalEntryNotFoundError)")

  monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
  with pytest.raises(DataError, match="network"):
    prep(tmp_path, [], "bytes", hf_dataset="openwebtext")
  calls = []

  def streamed(name, config_name, split, streaming):
    calls.append((name, config_name, split, streaming))
    return iter({"text": doc, "n": i} for i, doc in enumerate(DOCS * 10))

  monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=streamed))
  out, meta = prep(tmp_path, [], "bytes", hf_dataset="stories", hf_split="train", val_fraction=0.1)
  assert calls == [("stories", None, "train", True)]
  docs = split_documents(read_split(out, "train"), 255) + split_documents(
      read_split(out, "val"), 255)
  assert len(docs) == 120 and meta["splits"]["val"]["documents"] > 0


def test_config_data_fields_are_validated(tiny, tmp_path):
  with pytest.raises(ConfigError, match="data_dir"):
    validate(tiny(data_dir=str(tmp_path)))  # and input_file: one of the two
  with pytest.raises(ConfigError, match="tokenizer.*no such file"):
    validate(tiny(tokenizer=str(tmp_path / "missing.json")))


def test_prepare_command_line(tmp_path):
  write_docs(tmp_path / "in", DOCS[:4])
  ok = run_module("-m", "gptjax.prepare", f"--input={tmp_path}/in/*.txt", "--tokenizer=bytes",
                  f"--out_dir={tmp_path}/out", "--val_fraction=0.25")
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert "--config.data_dir=" in ok.stdout and os.path.isfile(tmp_path / "out" / "meta.json")
  (tmp_path / "in" / "bad.txt").write_bytes(b"ok \xff")
  bad = run_module("-m", "gptjax.prepare", f"--input={tmp_path}/in", "--tokenizer=bytes",
                   f"--out_dir={tmp_path}/out2")
  assert_user_error(bad, "bad.txt is not UTF-8 at byte 3")
  assert not os.path.exists(tmp_path / "out2" / "meta.json")


# --- First contact: nanoGPT's char-level bins, the validation rule, source trees, leftovers -------


def test_nanogpt_bins_without_meta_are_gpt2_ids_unless_the_tokenizer_is_named(tmp_path, cli):
  """nanoGPT's shakespeare_char bins without meta.pkl, under a byte-level preset: one error with
  the fix, nothing trained; named explicitly (--config.tokenizer=bytes) they are read as bytes."""
  directory = tmp_path / "shakespeare_char"
  directory.mkdir()
  chars = sorted(set(SHAKESPEARE))
  ids = np.array([chars.index(c) for c in SHAKESPEARE[:20_000]], np.uint16)  # 0..64
  ids[:18_000].tofile(directory / "train.bin")
  ids[18_000:].tofile(directory / "val.bin")
  args = ("--config=tiny_char", f"--config.data_dir={directory}", "--config.max_iters=1",
          "--config.n_layer=1", "--config.eval_iters=1", f"--config.out_dir={tmp_path / 'out'}")
  code, _, err = cli("train", *args)
  assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
  assert "GPT-2 token ids, as nanoGPT reads them without its meta.pkl" in err
  assert "--config=tiny" in err and "--config.tokenizer=bytes" in err
  assert not os.path.exists(tmp_path / "out" / "tiny_char")
  config = presets.load("tiny_char")
  config.update(dict(data_dir=str(directory), out_dir=str(tmp_path / "out")))
  assert dataset.open_tokens(_with(config, tokenizer="bytes")).tokenizer.name == "bytes"


def _with(config, **values):
  config = config.copy_and_resolve_references()
  config.update(values)
  return config


def test_one_rule_for_validation_the_nanogpt_tail_or_enough_whole_documents(tmp_path, tiny):
  """One document: its last 10%. Many: whole documents until >= 10% of the tokens and >= 2 of
  them from 20 up, capped at 10M tokens; the same for gptjax.prepare and --config.input_file."""
  # tiny Shakespeare as one file: nanoGPT's 10%, and the summary counts one document.
  out, meta = prep(tmp_path, [
      TINY_SHAKESPEARE if os.path.isfile(TINY_SHAKESPEARE) else
      write_docs(tmp_path / "text", [SHAKESPEARE]) / "doc00.txt"
  ],
                   name="one")
  train, val = meta["splits"]["train"]["tokens"], meta["splits"]["val"]["tokens"]
  assert abs(val / (train + val) - 0.1) < 0.001, (train, val)
  assert meta["splits"]["train"]["documents"] == meta["splits"]["val"]["documents"] == 1
  summary = prepare_lib.summary(meta, str(out))
  assert "from 1 document, whose last 10% (cut after a line) is validation" in summary, summary
  # A source tree of 136 files of very different sizes: at least 10% of the tokens, 2+ files.
  tree = tmp_path / "source_tree"
  sizes = np.random.default_rng(0).integers(50, 5000, 136)
  write_docs(tree, [(SHAKESPEARE * 3)[:n] for n in sizes])
  out, meta = prep(tmp_path, [tree], name="tree")
  val = meta["splits"]["val"]
  assert val["documents"] >= 2 and val["tokens"] >= 0.1 * (val["tokens"] +
                                                           meta["splits"]["train"]["tokens"])
  # 176 JSON-lines documents: as many whole ones as 10% takes (nanoGPT-style 0.05% gave 113).
  lines = [json.dumps({"text": (SHAKESPEARE * 2)[i * 300:i * 300 + 400]}) for i in range(176)]
  (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
  _, meta = prep(tmp_path, [tmp_path / "docs.jsonl"], name="jsonl")
  total = meta["splits"]["val"]["tokens"] + meta["splits"]["train"]["tokens"]
  assert meta["splits"]["val"]["tokens"] >= 0.1 * total and meta["splits"]["val"]["documents"] > 2
  # The same rule trains --config.input_file: a .jsonl of many documents gives whole ones.
  data = dataset.open_tokens(tiny(input_file=str(tmp_path / "docs.jsonl"), train_split=0.9))
  assert len(data.val) == meta["splits"]["val"]["tokens"]
  # The cap: 10M tokens (in bytes per token of the tokenizer), whatever the share.
  from gptjax.data import sources
  mask = sources.choose_validation([10_000_000] * 100, 0.1, 0, max_bytes=25_000_000)
  assert mask.sum() == 3  # 30 MB: the first draw past 25 MB
  assert sources.choose_validation([5] * 19, 0.01, 0, 1e9).sum() == 1  # 1 below 20 documents
  assert sources.choose_validation([5] * 20, 0.01, 0, 1e9).sum() == 2  # 2 from 20 up
  assert not sources.choose_validation([95, 5], 0.1, 0, 1e9)[0]  # no more than half


def test_a_source_tree_skips_what_is_not_text_with_one_counted_note(tmp_path, capsys):
  package = tmp_path / "package"
  write_docs(package, DOCS[:4], suffix=".py")
  (package / "__pycache__").mkdir()
  (package / "__pycache__" / "doc00.cpython-311.pyc").write_bytes(b"\xa7\r\r\n\0\0\0\0" * 50)
  (package / ".git" / "objects").mkdir(parents=True)
  (package / ".git" / "objects" / "ab").write_bytes(b"x\x01\xff" * 30)
  (package / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" * 20)
  capsys.readouterr()
  out, meta = prep(tmp_path, [package], val_fraction=0.2)
  note = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
  assert len(note) == 1 and "binary files: 1" in note[0], note
  assert "hidden or cache directories: 2" in note[0], note
  assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 4
  (package / "latin1.py").write_bytes("# café\n".encode("latin-1"))  # looks like text: an error
  with pytest.raises(DataError, match="latin1.py is not UTF-8 at byte 5"):
    prep(tmp_path, [package], name="again")


def test_prepare_leaves_nothing_behind(tmp_path):
  """A failed prepare leaves no out_dir it made; a finished one no lock file."""
  (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
  with pytest.raises(DataError):
    prep(tmp_path, [tmp_path / "latin1.txt"], name="failed")
  assert not os.path.exists(tmp_path / "failed")
  out, _ = prep(tmp_path, [write_docs(tmp_path / "in", DOCS)])
  assert sorted(os.listdir(out)) == ["meta.json", "train-00000.bin", "val-00000.bin"]
