"""Tokenizers, the token cache, batches and the corpus checks."""

from __future__ import annotations

import os

import numpy as np
import pytest

from gptjax.data import batches, dataset
from gptjax.data import tokenizer as tokenizer_lib
from gptjax.errors import DataError

from conftest import GPT2_TIKTOKEN


@pytest.mark.parametrize("text", [
    "", "hello", "Nel mezzo del cammin — ché la diritta via", "日本語のテキスト 🎉",
    "\x00\x7f\u0800\U0010ffff"
])
def test_byte_tokenizer_round_trips_utf8(text):
  tokenizer = tokenizer_lib.ByteTokenizer()
  tokens = tokenizer.encode(text)
  assert list(tokens) == list(text.encode("utf-8"))
  assert tokenizer.decode(tokens) == text


def test_byte_tokenizer_random_utf8_round_trips():
  rng = np.random.default_rng(0)
  tokenizer = tokenizer_lib.ByteTokenizer()
  for _ in range(200):
    code_points = rng.integers(0, 0x10FFFF, size=rng.integers(1, 40))
    text = "".join(chr(c) for c in code_points if not 0xD800 <= c < 0xE000)
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_byte_decoding_never_fails_on_cut_characters_or_padding_ids():
  tokenizer = tokenizer_lib.ByteTokenizer()
  cut = list("é".encode("utf-8"))[:1] + list(b"ok") + [300, 511]
  assert tokenizer.decode(cut) == "\ufffdok"


@pytest.mark.skipif(not os.path.isfile(GPT2_TIKTOKEN), reason="needs ../shared/data/gpt2.tiktoken")
def test_gpt2_bpe_from_the_local_ranks_file():
  tokenizer = tokenizer_lib.get_tokenizer("gpt2", GPT2_TIKTOKEN)
  assert list(tokenizer.encode("Hello world")) == [15496, 995]
  assert tokenizer.encoding.n_vocab == 50257
  assert tokenizer.decode(tokenizer.encode("Dante: «Nel mezzo»")) == "Dante: «Nel mezzo»"
  assert tokenizer.decode([15496, 995, 50300]) == "Hello world"  # padding ids are dropped


def test_gpt2_bpe_missing_file_is_a_clear_error(tmp_path):
  with pytest.raises(DataError, match="tokenizer_path.*does not exist"):
    tokenizer_lib.get_tokenizer("gpt2", str(tmp_path / "missing.tiktoken"))


def test_gpt2_bpe_unreachable_says_how_to_get_it(monkeypatch):
  monkeypatch.delenv(tokenizer_lib.GPT2_TIKTOKEN_ENV, raising=False)

  def offline(name):
    raise ConnectionError("no network")

  monkeypatch.setattr(tokenizer_lib.tiktoken, "get_encoding", offline)
  with pytest.raises(DataError, match="tokenizer_path") as error:
    tokenizer_lib.get_tokenizer("gpt2")
  assert tokenizer_lib.GPT2_TIKTOKEN_ENV in str(error.value)


def test_prepare_splits_caches_and_reuses(tiny):
  config = tiny()
  data = dataset.open_tokens(config)
  raw = open(config.input_file, "rb").read()
  cut = raw.index(b"\n", int(len(raw) * 0.9)) + 1  # one document: its last 10%, after a line
  np.testing.assert_array_equal(data.train, np.frombuffer(raw[:cut], np.uint8))
  np.testing.assert_array_equal(data.val, np.append(np.frombuffer(raw[cut:], np.uint8), 255))
  stamp = os.path.getmtime(os.path.join(data.cache_dir, "train-00000.bin"))
  assert dataset.open_tokens(config).cache_dir == data.cache_dir
  assert os.path.getmtime(os.path.join(data.cache_dir, "train-00000.bin")) == stamp  # reused
  with open(config.input_file, "a", encoding="utf-8") as f:
    f.write("more text")
  assert dataset.open_tokens(config).cache_dir != data.cache_dir  # source changed: re-tokenized


def test_default_corpus_is_embedded_and_offline(tiny):
  config = tiny(input_file="")
  data = dataset.open_tokens(config)
  assert len(data.train) > 1_000_000 and "def " in data.tokenizer.decode(data.train[:5000])


def test_batches_are_reproducible_and_shifted(tiny):
  data = dataset.open_tokens(tiny())
  a = batches.train_batch(data.train, 1, 7, 2, 4, 16)
  b = batches.train_batch(data.train, 1, 7, 2, 4, 16)
  c = batches.train_batch(data.train, 1, 8, 2, 4, 16)
  assert a.shape == (2, 4, 17) and a.dtype == np.int32
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  rows = batches.train_batch(data.train, 1, 7, 2, 4, 16, rows=slice(2, 4))
  np.testing.assert_array_equal(rows, a[:, 2:4])  # a process's rows of the global batch
  train = np.asarray(data.train)
  for window in a.reshape(-1, 17):  # every window is a real stretch of the training text
    starts = np.flatnonzero(train[:len(train) - 16] == window[0])
    assert any(np.array_equal(train[s:s + 17], window) for s in starts)


@pytest.mark.parametrize("content, message", [(None, "does not exist"), (b"", "is empty"),
                                              (b"   \n", "is empty"),
                                              ("caf\xe9".encode("latin-1") * 50, "is not UTF-8"),
                                              (b"short text", "fewer than block_size")])
def test_bad_corpora_are_clear_errors(tiny, tmp_path, content, message):
  path = tmp_path / "corpus.txt"
  if content is not None:
    path.write_bytes(content)
  with pytest.raises(DataError, match=message):
    dataset.open_tokens(tiny(input_file=str(path)))
  assert not os.path.exists(os.path.join(tiny().out_dir, "token_cache", "corpus-bytes"))


def test_from_config_to_tokens_the_tokenizer_is_built_and_checked_once(tiny, monkeypatch, tmp_path):
  """GPT-2's ranks are loaded, and the data's tokenizer checked against the config, once per
  open: for an input_file tokenized now, the same one from the token cache, a data directory of
  gptjax.prepare and nanoGPT's train.bin / val.bin."""
  from gptjax.data import prepare as prepare_lib
  loads, checks = [], []
  load, check = tokenizer_lib.gpt2_encoding, dataset._check_tokenizer
  monkeypatch.setattr(tokenizer_lib, "gpt2_encoding", lambda *a: loads.append(a) or load(*a))
  monkeypatch.setattr(dataset, "_check_tokenizer", lambda *a: checks.append(a) or check(*a))
  data_dir, nanogpt_dir = tmp_path / "prepared", tmp_path / "nanogpt"
  prepare_lib.prepare(
      prepare_lib.Options(inputs=[str(tiny().input_file)],
                          tokenizer="gpt2",
                          out_dir=str(data_dir),
                          val_fraction=0.1))
  nanogpt_dir.mkdir()
  for split in ("train", "val"):
    np.asarray(np.arange(300) % 50257, np.uint16).tofile(nanogpt_dir / f"{split}.bin")
  configs = {
      "input_file, tokenized now":
          tiny(tokenizer="gpt2", vocab_size=50304),
      "input_file, from the token cache":
          tiny(tokenizer="gpt2", vocab_size=50304),
      "gptjax.prepare's data_dir":
          tiny(tokenizer="gpt2", vocab_size=50304, input_file="", data_dir=str(data_dir)),
      "nanoGPT's train.bin":
          tiny(tokenizer="gpt2", vocab_size=50304, input_file="", data_dir=str(nanogpt_dir)),
  }
  for what, config in configs.items():
    loads.clear()
    checks.clear()
    data = dataset.open_tokens(config)
    assert data.tokenizer.name == "gpt2", what
    assert len(loads) == 1, (what, len(loads))
    assert len(checks) <= 1, (what, len(checks))


# --- Bytes of text, for bits per byte -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bytes", "gpt2"])
def test_val_bytes_are_the_decoded_texts_bytes_counted_once(tiny, kind, monkeypatch):
  """The validation split's text bytes equal its decoded text's UTF-8 length, and are counted
  once per data set (cached beside its tokens)."""
  config = tiny(tokenizer=kind, vocab_size=256 if kind == "bytes" else 50304)
  data = dataset.open_tokens(config)
  val = np.asarray(data.val)
  # The text the tokens stand for; the document separator (<|endoftext|>) stands for none.
  decoded = data.tokenizer.decode(val[val != data.tokenizer.eot_id])
  assert "ché" in decoded and data.tokenizer.eot_id in val
  assert tokenizer_lib.val_bytes(data) == len(decoded.encode("utf-8"))
  np.testing.assert_allclose(tokenizer_lib.val_tokens_per_byte(data),
                             len(data.val) / len(decoded.encode("utf-8")))
  assert os.path.isfile(os.path.join(data.cache_dir, tokenizer_lib.VAL_BYTES))
  counted = []
  monkeypatch.setattr(tokenizer_lib, "text_bytes", lambda *a: counted.append(a) or 0)
  assert tokenizer_lib.val_bytes(dataset.open_tokens(config)) == len(decoded.encode("utf-8"))
  assert not counted  # read from the cache, not counted again


def test_text_bytes_leave_out_end_of_text_and_count_multibyte_characters():
  text = "héllo ☃ 𝄞 wörld\n" * 3
  for tokenizer in (tokenizer_lib.ByteTokenizer(),
                    tokenizer_lib.get_tokenizer("gpt2", GPT2_TIKTOKEN)):
    tokens = np.concatenate([tokenizer.encode(text), [tokenizer.eot_id], tokenizer.encode(text)])
    assert tokenizer_lib.text_bytes(tokenizer, tokens) == 2 * len(text.encode("utf-8"))
