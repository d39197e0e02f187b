"""Sampling: the filters, the compiled decode loop against a per-token full-recompute reference
(greedy and seeded, past the sliding window, batched), stopping, streaming text, and the CLI."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax.config import ModelConfig
from gptjax.data.tokenizer import ByteTokenizer
from gptjax.generate import Transcript, generate, sample_logits
from gptjax.model import GPT

from conftest import assert_user_error, run_command, run_module


def allowed_tokens(logits, **settings):
  """The set of tokens sample_logits can draw, found by drawing many times."""
  keys = jax.random.split(jax.random.key(0), 4000)
  draw = jax.vmap(lambda k: sample_logits(logits[None], k[None], **settings)[0])
  return set(np.asarray(draw(keys)).tolist())


def brute_force_allowed(logits, top_k, top_p, vocab_limit):
  """The tokens nucleus + top-k sampling keeps, by sorting in plain Python."""
  items = sorted(((float(l), i) for i, l in enumerate(logits[:vocab_limit])), reverse=True)
  if top_k:
    items = items[:top_k]
  probs = np.exp([l for l, _ in items] - np.max([l for l, _ in items]))
  probs /= probs.sum()
  kept, mass = [], 0.0
  for (_, i), p in zip(items, probs):
    if mass >= top_p:
      break
    kept.append(i)
    mass += p
  return set(kept)


LOGITS = jnp.log(jnp.array([0.30, 0.25, 0.20, 0.12, 0.08, 0.05, 0.0001, 0.0001]))


@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (3, 1.0), (0, 0.5), (0, 0.7), (4, 0.8),
                                          (2, 0.9), (0, 0.01)])
def test_filters_keep_exactly_the_brute_force_set(top_k, top_p):
  got = allowed_tokens(LOGITS, temperature=1.0, top_k=top_k, top_p=top_p, vocab_limit=6)
  assert got == brute_force_allowed(np.asarray(LOGITS), top_k, top_p, 6)


def test_padding_rows_are_never_drawn_even_when_most_likely():
  logits = jnp.array([0.0, 0.0, 10.0, 10.0])
  assert allowed_tokens(logits, temperature=1.0, top_k=0, top_p=1.0, vocab_limit=2) == {0, 1}
  assert int(
      sample_logits(logits[None],
                    jax.random.key(0)[None],
                    temperature=0.0,
                    top_k=0,
                    top_p=1.0,
                    vocab_limit=2)[0]) in (0, 1)


def test_temperature_sharpens_the_distribution():
  keys = jax.random.split(jax.random.key(1), 4000)

  def frequency_of_best(temperature):
    draw = jax.vmap(lambda k: sample_logits(
        LOGITS[None], k[None], temperature=temperature, top_k=0, top_p=1.0, vocab_limit=8)[0])
    return float(np.mean(np.asarray(draw(keys)) == 0))

  assert frequency_of_best(0.3) > frequency_of_best(1.0) + 0.2
  np.testing.assert_allclose(frequency_of_best(1.0), 0.30, atol=0.03)


BLOCK = 12


@pytest.fixture(scope="module")
def small_model():
  config = ModelConfig(vocab_size=64, block_size=BLOCK, n_layer=2, n_head=2, n_embd=16)
  model = GPT(config)
  params = nn.meta.unbox(model.init(jax.random.key(3), jnp.zeros((1, BLOCK), jnp.int32))["params"])
  return model, params


def reference(model, params, prompt, new_tokens, *, seed, sample, **settings):
  """Sample `sample` as nanoGPT-style decoding draws it: for every token the whole context through
  the model, no cache. The context is what gptjax.generate's cache holds: the prompt's last
  block_size tokens, then, whenever it is full, the last block_size // 2 tokens. Token i of sample
  b is drawn with fold_in(fold_in(key(seed), b), i)."""

  @jax.jit
  def next_token(context, length, key):  # context padded to BLOCK: one compile (causal: exact)
    logits = model.apply({"params": params}, context[None])[:, length - 1]
    return sample_logits(logits, key[None], **settings)[0]

  sequence = list(prompt)[-BLOCK:]
  context = list(sequence)
  key = jax.random.fold_in(jax.random.key(seed), sample)
  for i in range(new_tokens):
    padded = jnp.asarray(context + [0] * (BLOCK - len(context)))
    token = int(next_token(padded, len(context), jax.random.fold_in(key, i)))
    sequence.append(token)
    context = sequence[-(BLOCK // 2):] if len(context) == BLOCK else context + [token]
  return sequence


def test_greedy_generation_equals_the_full_recompute_reference_past_the_window(small_model):
  model, params = small_model
  params = jax.tree.map(lambda x: x * 20, params)  # sharper logits: fewer near-ties in argmax
  settings = dict(temperature=0.0, top_k=0, top_p=1.0, vocab_limit=64)
  got = generate(model, params, [5, 9, 2], 30, seed=0, **settings)
  assert got.tolist() == [reference(model, params, [5, 9, 2], 30, seed=0, sample=0, **settings)]


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.8, 5, 0.9)])
def test_seeded_batch_equals_the_reference_and_one_by_one_past_the_window(
    small_model, temperature, top_k, top_p):
  model, params = small_model
  settings = dict(temperature=temperature, top_k=top_k, top_p=top_p, vocab_limit=50)
  prompt = list(range(20))  # longer than block_size: cropped to its last 12 tokens
  batch = generate(model, params, prompt, 30, seed=1, num_samples=3, **settings)
  assert batch.shape == (3, BLOCK + 30) and batch.max() < 50
  assert len({tuple(row) for row in batch.tolist()}) == 3  # the samples differ
  for b in range(3):
    assert batch[b].tolist() == reference(model, params, prompt, 30, seed=1, sample=b, **settings)
    alone = generate(model, params, prompt, 30, seed=1, first_sample=b, **settings)
    assert alone.tolist() == [batch[b].tolist()]


def test_generation_stops_when_every_sample_drew_the_stop_token(small_model):
  model, params = small_model
  settings = dict(temperature=1.0, top_k=0, top_p=1.0, vocab_limit=64)
  full = generate(model, params, [1], 40, seed=2, num_samples=2, **settings)
  stop = int(full[0, 5])  # sample 0 draws it at step 4 at the latest
  last = max(list(row[1:]).index(stop) for row in full.tolist() if stop in row[1:])
  stopped = generate(model, params, [1], 40, seed=2, num_samples=2, stop_token=stop, **settings)
  if all(stop in row[1:] for row in full.tolist()):
    assert stopped.shape[1] == 1 + last + 1
  for row, full_row in zip(stopped.tolist(), full.tolist()):
    cut = row[1:].index(stop) if stop in row[1:] else len(row) - 1
    assert row[:cut + 2] == full_row[:cut + 2]  # the same tokens up to the stop token,
    assert set(row[cut + 1:]) <= {stop}  # then only the stop token


def test_transcript_holds_back_cut_characters_and_stop_strings_and_stops_there():
  tokenizer = ByteTokenizer()
  text = "ab é END tail"
  tokens = list(tokenizer.encode(text))
  transcript = Transcript(tokenizer, tokens[:1], ["END"], stop_token=None)
  pieces = []
  for token in tokens[1:]:  # one byte at a time: "é" is two, and "E", "EN" may start "END"
    pieces.append(transcript.add([token]))
    assert "\ufffd" not in transcript.text and "E" not in transcript.text
  assert transcript.stopped
  assert "".join(pieces) + transcript.finish() == "ab é " == transcript.text
  ended = Transcript(tokenizer, tokens[:2], [], stop_token=ord(" "))
  assert ended.add(tokens[2:]) == "ab" and ended.stopped and ended.finish() == ""


@pytest.fixture(scope="module")
def hf_gpt2_dir(tmp_path_factory):
  """A small random GPT-2 in Hugging Face format, vocab 257 (so the byte tokenizer serves)."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=16, vocab_size=257)
  directory = str(tmp_path_factory.mktemp("hf_gpt2"))
  transformers.GPT2LMHeadModel(config).save_pretrained(directory)
  return directory


def test_cli_samples_straight_from_hf_weights_and_reuses_the_compiled_programs(hf_gpt2_dir):
  from gptjax.hf_gpt2 import load_hf_gpt2
  model, params = load_hf_gpt2(hf_gpt2_dir)
  prompt = list(ByteTokenizer().encode("ab"))
  expected = generate(model,
                      params,
                      prompt,
                      40,
                      seed=7,
                      num_samples=2,
                      temperature=0.9,
                      top_k=20,
                      vocab_limit=256)
  texts = [ByteTokenizer().decode(row) for row in expected]
  stop = next(texts[0][i:i + 2]
              for i in range(5, 40)  # one that sample 0 reaches, in ASCII
              if texts[0][i:i + 2].isascii() and texts[0][i:i + 2].isprintable())
  command = ("-m", "gptjax.sample", f"--init_from={hf_gpt2_dir}", "--prompt=ab", "--seed=7",
             "--max_new_tokens=40", "--num_samples=2", "--temperature=0.9", "--top_k=20",
             f"--stop={stop}")
  env = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}  # cache even these tiny programs
  first, second = run_module(*command, env=env), run_module(*command, env=env)
  assert first.returncode == 0, first.stderr[-3000:]
  cut = [text[:text.index(stop, 2)] if stop in text[2:] else text for text in texts]
  expected_stdout = f"{cut[0]}\n---------------\n{cut[1]}\n"
  assert first.stdout == expected_stdout.replace("\r\n", "\n").replace("\r", "\n")
  assert second.stdout == first.stdout
  assert "(2 of 2 programs from the compilation cache)" in second.stderr, second.stderr


def test_cli_mistakes_are_one_clear_error(tmp_path, hf_gpt2_dir, monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty hub cache
  assert_user_error(run_command("gptjax.sample", "--init_from=gpt2"), "--init_from", "'gpt2'",
                    "Fix:")
  assert_user_error(run_command("gptjax.sample", f"--init_from={hf_gpt2_dir}", "--stop_at_eot"),
                    "--stop_at_eot", "bytes tokenizer")
  assert_user_error(run_command("gptjax.sample", "--run_dir=x", f"--init_from={tmp_path}"),
                    "one of --run_dir", "--init_from")
