"""Text generation in one compiled loop with the KV cache: the library half of gptjax.sample.

  tokens = generate(model, params, prompt_ids, max_new_tokens=100, seed=0)

Two compiled programs do all the work, on the device: `_prefill` feeds the prompt through the KV
cache and draws the first token; `_advance` draws tokens in a `lax.while_loop` (feed the last one,
filter, draw, repeat) until a target count or every sample's end-of-text token. The host calls
`_advance` a few times only, so that tokens can be printed as they come: each call runs for about
`chunk_seconds`. Python never touches a single token step, which is where a per-token jitted call
used to spend most of its time.

Semantics (kept from the per-token loop this replaced, and tested against it): prompts longer than
block_size are cropped to their last block_size tokens, as nanoGPT does; when the cache is full
(learned positions end at block_size) it is rebuilt from the last block_size // 2 tokens, a sliding
window that re-encodes half a context once per block_size // 2 tokens. Sample b draws token i with
the key fold_in(fold_in(key(seed), b), i): in a batch each sample gets the tokens it would alone.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from typing import Any, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from gptjax import compile_cache
from gptjax.errors import UserError
from gptjax.params import to_layout

CHUNK_CAPACITY = 256  # most tokens one `_advance` call draws (its output buffer's length)
MIN_PROMPT_BUCKET = 16  # prompts are padded to a power of two at least this long: few compiles


class Sampling(NamedTuple):
  """The sampling settings, compiled into the programs (static: hashable)."""
  temperature: float  # 0: greedy
  top_k: int  # 0: all tokens
  top_p: float  # 1.0: no nucleus filter
  vocab_limit: int  # rows at or past it are padding, never drawn
  stop_token: int = -1  # a sample that draws it is done (-1: none)


class DecodeState(NamedTuple):
  """What the loop carries between tokens and between `_advance` calls (a pytree)."""
  cache: Any  # the model's "cache" collection: each layer's keys and values, and `position`
  context: jax.Array  # (B, block_size) int32: the tokens whose keys the cache holds, in order
  pending: jax.Array  # (B,) the last token drawn: already output, not yet fed to the model
  drawn: jax.Array  # () int32: tokens drawn so far
  keys: jax.Array  # (B,) one PRNG key per sample
  done: jax.Array  # (B,) bool: the sample drew stop_token


def sample_logits(logits, keys, *, temperature: float, top_k: int, top_p: float, vocab_limit: int):
  """Draws one token per row of `logits` (B, V), row b with keys[b]. Rows past vocab_limit
  (padding) are never drawn.

  temperature 0 is greedy; top_k keeps the k most likely tokens; top_p keeps the smallest set whose
  probability reaches p (nucleus sampling; after top_k when both are set, over the k kept).
  """
  logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -jnp.inf)
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_k or top_p < 1.0:
    # The candidates, most likely first: top_k's are already sorted, and a nucleus over them needs
    # no sort of the whole vocabulary (50k entries per token at GPT-2's size).
    candidates = (jax.lax.top_k(logits, min(top_k, vocab_limit))[0]
                  if top_k else jnp.sort(logits, axis=-1)[:, ::-1])
    threshold = candidates[:, -1:]  # the least likely token kept
    if top_p < 1.0:
      probs = jax.nn.softmax(candidates, axis=-1)
      mass_before = jnp.cumsum(probs, axis=-1) - probs  # probability of the tokens ranked above
      kept = jnp.where(mass_before < top_p, candidates, jnp.inf)
      threshold = jnp.min(kept, axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)


def init_cache(model, batch_size: int):
  """An empty KV cache for `batch_size` sequences (shapes from eval_shape; nothing is computed)."""
  tokens = jnp.zeros((batch_size, model.config.block_size), jnp.int32)
  shapes = jax.eval_shape(functools.partial(model.init, decode=True), jax.random.key(0), tokens)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


def _feed(model, params, cache, tokens, logits_at):
  """Feeds `tokens` (B, T) at the cache's position: ((B, V) logits at `logits_at`, new cache)."""
  logits, variables = model.apply({
      "params": params,
      "cache": cache
  },
                                  tokens,
                                  decode=True,
                                  logits_at=logits_at,
                                  mutable=["cache"])
  return logits[:, 0], variables["cache"]


def _draw(state: DecodeState, logits, sampling: Sampling) -> DecodeState:
  """Draws token number `state.drawn` of every sample from `logits` (B, V); it becomes pending."""
  keys = jax.vmap(jax.random.fold_in, (0, None))(state.keys, state.drawn)
  token = sample_logits(logits,
                        keys,
                        temperature=sampling.temperature,
                        top_k=sampling.top_k,
                        top_p=sampling.top_p,
                        vocab_limit=sampling.vocab_limit)
  token = jnp.where(state.done, sampling.stop_token, token)  # a finished sample stays finished
  return state._replace(pending=token,
                        drawn=state.drawn + 1,
                        done=state.done | (token == sampling.stop_token))


@functools.partial(jax.jit, static_argnames=("model", "sampling"))
def _prefill(params, prompt, prompt_length, seed, first_sample, *, model,
             sampling: Sampling) -> DecodeState:
  """Feeds `prompt` (B, P), whose first `prompt_length` tokens are real, and draws token 0.
  Sample b's key is fold_in(key(seed), first_sample + b), made here: no eager op before the loop.

  The padding after the prompt goes through the cache too, but the position is set back to
  prompt_length: later tokens overwrite those keys, and the causal mask never shows them.
  """
  batch, bucket = prompt.shape
  keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed),
                                                 first_sample + jnp.arange(batch))
  logits, cache = _feed(model, params, init_cache(model, batch), prompt, prompt_length - 1)
  cache = {**cache, "position": prompt_length.astype(jnp.int32)}
  context = jnp.zeros((batch, model.config.block_size), jnp.int32).at[:, :bucket].set(prompt)
  state = DecodeState(cache,
                      context,
                      pending=jnp.zeros(batch, jnp.int32),
                      drawn=jnp.int32(0),
                      keys=keys,
                      done=jnp.zeros(batch, bool))
  return _draw(state, logits, sampling)


@functools.partial(jax.jit, static_argnames=("model", "sampling"), donate_argnames=("state",))
def _advance(params, state: DecodeState, target, *, model, sampling: Sampling):
  """Draws tokens until `target` are drawn (at most CHUNK_CAPACITY more) or every sample is done.

  Returns (state, tokens (B, CHUNK_CAPACITY)): the first target - state.drawn columns are the new
  tokens. An inner loop feeds one token at a time while the cache has room; when it is full, the
  outer loop rebuilds it from the last block_size // 2 tokens (a `cond` once per half context, not
  per token).
  """
  block = model.config.block_size
  half = max(block // 2, 1)
  first = state.drawn
  out = jnp.zeros((state.pending.shape[0], CHUNK_CAPACITY), jnp.int32)

  def record(state, out):
    return jax.lax.dynamic_update_slice(out, state.pending[:, None], (0, state.drawn - 1 - first))

  def one_token(carry):
    state, out = carry
    position = state.cache["position"]
    context = jax.lax.dynamic_update_slice(state.context, state.pending[:, None], (0, position))
    logits, cache = _feed(model, params, state.cache, state.pending[:, None], 0)
    state = _draw(state._replace(cache=cache, context=context), logits, sampling)
    return state, record(state, out)

  def slide_window(carry):
    state, out = carry
    window = jnp.concatenate([state.context[:, block - half + 1:], state.pending[:, None]], 1)
    logits, cache = _feed(model, params, {
        **state.cache, "position": jnp.int32(0)
    }, window, half - 1)
    context = jax.lax.dynamic_update_slice(state.context, window, (0, 0))
    state = _draw(state._replace(cache=cache, context=context), logits, sampling)
    return state, record(state, out)

  def unfinished(carry):
    state, _ = carry
    return (state.drawn < target) & ~jnp.all(state.done)

  def segment(carry):
    full = carry[0].cache["position"] == block
    carry = jax.lax.cond(full, slide_window, lambda c: c, carry)
    return jax.lax.while_loop(lambda c: unfinished(c) & (c[0].cache["position"] < block), one_token,
                              carry)

  return jax.lax.while_loop(unfinished, segment, (state, out))


def unrolled(model, params):
  """(model, params) with the blocks unrolled: a scan_layers model's stacked parameters unstacked,
  since the KV cache is kept per layer (`h_0`, `h_1`, ...). Others are returned as they are."""
  if not model.config.scan_layers:
    return model, params
  return (type(model)(dataclasses.replace(model.config,
                                          scan_layers=False)), to_layout(params, scan_layers=False))


def on_this_device(model):
  """The model as it samples fastest here: on a CPU in float32, whatever it trained in, since XLA's
  CPU matmuls convert bfloat16 rather than compute in it (docs/performance.md). Elsewhere as it
  trained."""
  if jax.devices()[0].platform != "cpu" or model.config.dtype == "float32":
    return model
  print(f"# sampling in float32 on the CPU (the run computes in {model.config.dtype})",
        file=sys.stderr,
        flush=True)
  return type(model)(dataclasses.replace(model.config, dtype="float32"))


def decode_params(model, params):
  """`params` with every matmul weight and embedding already in the compute dtype (bfloat16
  presets): the model casts them at every use, which per token reads all the float32 weights again.
  Exact: the same casts, done once. LayerNorms keep float32, as they compute in it."""
  dtype = jnp.dtype(model.config.dtype)
  if dtype == jnp.float32:
    return params
  cast = lambda path, x: x if any("ln_" in str(k) for k in path) else x.astype(dtype)
  return jax.jit(lambda p: jax.tree_util.tree_map_with_path(cast, p))(params)


def prompt_bucket(length: int, block_size: int) -> int:
  """The padded prompt length: a power of two (so a new prompt length rarely compiles anew)."""
  return min(block_size, max(MIN_PROMPT_BUCKET, 1 << (length - 1).bit_length()))


@functools.lru_cache(maxsize=8)
def compiled_programs(model, sampling: Sampling, params_tree, params_leaves: tuple, batch: int,
                      bucket: int):
  """(prefill, advance) compiled ahead of time for these shapes; kept for the process's next
  generation, and found in the persistent compilation cache (when on) by the next process."""
  params = jax.tree.unflatten(params_tree, params_leaves)
  scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype)
  inputs = (jax.ShapeDtypeStruct(
      (batch, bucket), jnp.int32), scalar(jnp.int32), scalar(jnp.uint32), scalar(jnp.int32))
  static = dict(model=model, sampling=sampling)
  prefill = _prefill.lower(params, *inputs, **static).compile()
  state = jax.eval_shape(functools.partial(_prefill, **static), params, *inputs)
  return prefill, _advance.lower(params, state, scalar(jnp.int32), **static).compile()


def stream(model,
           params,
           prompt: list[int],
           max_new_tokens: int,
           *,
           seed: int,
           num_samples: int = 1,
           first_sample: int = 0,
           sampling: Sampling,
           chunk_seconds: float | None = None,
           timings: dict | None = None) -> Iterator[np.ndarray]:
  """Continues `prompt` `num_samples` times, yielding the new tokens as they come: (B, n) arrays.

  Samples first_sample ... first_sample + num_samples - 1 are drawn, sample b with the key
  fold_in(jax.random.key(seed), b): any one of a batch can be drawn again alone.

  chunk_seconds: how long each device call should run (tokens then come about this often);
    None: as few calls as possible. Stops early when every sample has drawn the stop token (the
    tokens after it are the stop token again).
  timings: filled with compile_s (both programs), programs_from_cache (of the two, those loaded
    from the persistent compilation cache, once compile_cache.use is on) and decode_s
    (drawing, after the compiles).
  """
  model, params = unrolled(model, params)
  block_size = model.config.block_size
  prompt = list(prompt)[-block_size:]
  if not prompt:
    raise UserError("the prompt is empty: generation needs at least one token to continue.")
  padded = np.zeros((num_samples, prompt_bucket(len(prompt), block_size)), np.int32)
  padded[:, :len(prompt)] = prompt
  inputs = (padded, np.int32(len(prompt)), np.uint32(seed % 2**32), np.int32(first_sample))
  leaves, tree = jax.tree.flatten(params)
  start, hits = time.perf_counter(), compile_cache.hits()
  prefill, advance = compiled_programs(
      model, sampling, tree, tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves),
      *padded.shape)
  timings = {} if timings is None else timings
  timings["compile_s"] = time.perf_counter() - start
  timings["programs_from_cache"] = compile_cache.hits() - hits
  start = time.perf_counter()
  state = prefill(params, *inputs)
  yield np.asarray(state.pending)[:, None]
  drawn, per_token_s = 1, None
  while drawn < max_new_tokens and not bool(np.all(state.done)):
    n = CHUNK_CAPACITY
    if chunk_seconds is not None:  # the first call is short, to learn the speed
      n = 4 if per_token_s is None else int(chunk_seconds / max(per_token_s, 1e-6))
    n = max(1, min(n, CHUNK_CAPACITY, max_new_tokens - drawn))
    call_start = time.perf_counter()
    state, out = advance(params, state, np.int32(drawn + n))
    new = np.asarray(out)[:, :int(state.drawn) - drawn]
    per_token_s = (time.perf_counter() - call_start) / max(1, new.shape[1])
    drawn += new.shape[1]
    yield new
  timings["decode_s"] = time.perf_counter() - start


def generate(model,
             params,
             prompt: list[int],
             max_new_tokens: int,
             *,
             seed: int = 0,
             num_samples: int = 1,
             first_sample: int = 0,
             temperature: float = 0.8,
             top_k: int = 200,
             top_p: float = 1.0,
             vocab_limit: int | None = None,
             stop_token: int | None = None) -> np.ndarray:
  """Continues `prompt` `num_samples` times. Returns (num_samples, len(prompt) + new tokens):
  max_new_tokens new ones, fewer when every sample drew `stop_token` (then padded with it)."""
  sampling = Sampling(float(temperature), int(top_k), float(top_p),
                      int(vocab_limit or model.config.vocab_size),
                      -1 if stop_token is None else int(stop_token))
  prompt = list(prompt)[-model.config.block_size:]
  pieces = list(
      stream(model,
             decode_params(model, params),
             prompt,
             max_new_tokens,
             seed=seed,
             num_samples=num_samples,
             first_sample=first_sample,
             sampling=sampling))
  return np.concatenate([np.tile(np.asarray(prompt, np.int32), (num_samples, 1))] + pieces, 1)


class Transcript:
  """One sample's text as its tokens come: what is safe to print yet, and where it stops.

  Text is held back while it could still change: a trailing U+FFFD may be a multi-byte character
  cut between tokens, and the last characters may be the start of a stop string. A sample stops at
  its first stop token or stop string (found in the new text only), which is not printed.
  """

  def __init__(self, tokenizer, prompt: list[int], stops: list[str], stop_token: int | None):
    self.tokenizer, self.tokens = tokenizer, list(prompt)
    self.stops, self.stop_token = stops, stop_token
    self.prompt_chars = len(tokenizer.decode(self.tokens))
    self.text = ""  # the text handed out so far
    self.stopped = False

  def add(self, new_tokens) -> str:
    """Takes a sample's next tokens; returns the text that is now final and not yet handed out."""
    if self.stopped:
      return ""
    new_tokens = [int(t) for t in new_tokens]
    if self.stop_token is not None and self.stop_token in new_tokens:
      new_tokens, self.stopped = new_tokens[:new_tokens.index(self.stop_token)], True
    self.tokens += new_tokens
    text = self.tokenizer.decode(self.tokens)
    found = [i for i in (text.find(s, self.prompt_chars) for s in self.stops) if i >= 0]
    if found:
      end, self.stopped = min(found), True
    elif self.stopped:
      end = len(text)
    else:
      end = len(text.rstrip("\ufffd")) - max((len(s) - 1 for s in self.stops), default=0)
    piece = text[len(self.text):max(end, len(self.text))]
    self.text += piece
    return piece

  def finish(self) -> str:
    """The rest of the text once no more tokens come: what was held back is final now."""
    if self.stopped:  # add() handed out everything up to the stop
      return ""
    self.stopped = True
    piece = self.tokenizer.decode(self.tokens)[len(self.text):]
    self.text += piece
    return piece
