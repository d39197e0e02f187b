"""Text generation with the KV cache, and `python -m gptjax.sample`.

  python -m gptjax.sample --run_dir out/tiny_char --prompt "ROMEO:" --max_new_tokens 300

The prompt is fed once (prefill), then one jitted step per new token reads and extends each layer's
cached keys and values: O(T) work per token instead of re-running the whole prefix. Prompts longer
than block_size are cropped to their last block_size tokens, as nanoGPT does. When the cache is full
(learned positions end at block_size) it is rebuilt from the last block_size // 2 tokens, a sliding
window that re-encodes half a context once per block_size // 2 tokens.
"""

from __future__ import annotations

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from tqdm import tqdm

from gptjax import cli
from gptjax import data as data_lib
from gptjax.checkpoint import load_run
from gptjax.errors import UserError
from gptjax.model import GPT


def sample_logits(logits, rng, *, temperature: float, top_k: int, top_p: float, vocab_limit: int):
  """Draws one token per row of `logits` (B, V). Rows past vocab_limit (padding) are never drawn.

  temperature 0 is greedy; top_k keeps the k most likely tokens; top_p keeps the smallest set whose
  probability reaches p (nucleus sampling). Both filters apply when both are set.
  """
  logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -jnp.inf)
  if temperature == 0:
    return jnp.argmax(logits, axis=-1)
  logits = logits / temperature
  if top_k:
    kth_largest = jax.lax.top_k(logits, min(top_k, vocab_limit))[0][:, -1:]
    logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # probability of the tokens ranked above
    kept = jnp.where(mass_before < top_p, sorted_logits, jnp.inf)
    threshold = jnp.min(kept, axis=-1, keepdims=True)  # the least likely token still kept
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1)


def init_cache(model: GPT, batch_size: int):
  """An empty KV cache for `batch_size` sequences (shapes from eval_shape; nothing is computed)."""
  tokens = jnp.zeros((batch_size, model.config.block_size), jnp.int32)
  shapes = jax.eval_shape(functools.partial(model.init, decode=True), jax.random.key(0), tokens)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


@functools.partial(jax.jit, static_argnames=("model", "sampling"))
def decode_step(params, cache, tokens, rng, *, model: GPT, sampling: tuple):
  """Feeds `tokens` (B, T) at the cache's position; returns (cache, next token (B,), logits (B, T, V))."""
  logits, variables = model.apply({"params": params, "cache": cache}, tokens, decode=True,
                                  mutable=["cache"])
  temperature, top_k, top_p, vocab_limit = sampling
  next_token = sample_logits(logits[:, -1], rng, temperature=temperature, top_k=top_k,
                             top_p=top_p, vocab_limit=vocab_limit)
  return variables["cache"], next_token, logits


def generate(model: GPT, params, prompt: list[int], max_new_tokens: int, *, rng,
             num_samples: int = 1, temperature: float = 0.8, top_k: int = 200, top_p: float = 1.0,
             vocab_limit: int | None = None, progress: bool = False) -> np.ndarray:
  """Continues `prompt` `num_samples` times. Returns (num_samples, len(prompt) + max_new_tokens)."""
  block_size = model.config.block_size
  sampling = (float(temperature), int(top_k), float(top_p), vocab_limit or model.config.vocab_size)
  tokens = np.tile(np.asarray(prompt[-block_size:], np.int32), (num_samples, 1))
  context = tokens  # what the cache holds
  cache = init_cache(model, num_samples)
  cache, next_token, _ = decode_step(params, cache, jnp.asarray(context), rng, model=model,
                                     sampling=sampling)
  generated = []
  for i in tqdm(range(max_new_tokens), disable=not progress, desc="sampling", unit="tok",
                file=sys.stderr):
    generated.append(np.asarray(next_token))
    if i + 1 == max_new_tokens:
      break
    step_rng = jax.random.fold_in(rng, i + 1)
    if context.shape[1] == block_size:  # cache full: slide the window
      context = np.concatenate([tokens, np.stack(generated, 1)], 1)[:, -(block_size // 2):]
      cache, next_token, _ = decode_step(params, init_cache(model, num_samples),
                                         jnp.asarray(context), step_rng, model=model,
                                         sampling=sampling)
    else:
      context = np.concatenate([context, generated[-1][:, None]], 1)
      cache, next_token, _ = decode_step(params, cache, jnp.asarray(generated[-1][:, None]),
                                         step_rng, model=model, sampling=sampling)
  return np.concatenate([tokens, np.stack(generated, 1)], 1) if generated else tokens


def read_prompt(prompt: str) -> str:
  """The --prompt text: `prompt` itself, or with FILE:path the UTF-8 text of that file."""
  if not prompt.startswith("FILE:"):
    return prompt
  path = prompt[len("FILE:"):]
  try:
    with open(path, encoding="utf-8") as prompt_file:
      return prompt_file.read()
  except (OSError, UnicodeDecodeError) as e:
    reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    raise UserError(f"--prompt FILE:{path}: cannot read {path!r} ({reason}). Fix: give the path "
                    f"of a UTF-8 text file, or the prompt itself without FILE:.") from e


def define_flags() -> None:
  flags.DEFINE_string("run_dir", None, "Run directory, e.g. out/tiny_char.")
  flags.DEFINE_enum("checkpoint", "latest", ["latest", "best"],
                    "Which checkpoint: the latest, or the best by val loss.")
  flags.DEFINE_string("prompt", "", "Text to continue; FILE:path reads it from a file. Empty: start "
                      "from a newline (bytes) or <|endoftext|> (GPT-2).")
  flags.DEFINE_integer("max_new_tokens", 500, "Tokens to generate per sample.")
  flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 = greedy.")
  flags.DEFINE_integer("top_k", 200, "Keep only the k most likely tokens; 0 = all.")
  flags.DEFINE_float("top_p", 1.0, "Nucleus sampling: keep tokens up to this probability.")
  flags.DEFINE_integer("num_samples", 1, "Independent samples, decoded as a batch.")
  flags.DEFINE_integer("seed", 1337, "Random seed.")


def main(argv) -> None:
  del argv
  f = flags.FLAGS
  if not f.run_dir:
    raise UserError("--run_dir is required, e.g. --run_dir out/tiny_char.")
  for name, ok in (("max_new_tokens", f.max_new_tokens >= 1), ("temperature", f.temperature >= 0),
                   ("top_k", f.top_k >= 0), ("top_p", 0 < f.top_p <= 1),
                   ("num_samples", f.num_samples >= 1)):
    if not ok:
      raise UserError(f"--{name}={f[name].value} is out of range. Fix: see "
                      f"`python -m gptjax.sample --help`.")
  prompt_text = read_prompt(f.prompt)  # before loading anything
  model, params, config, step, val_loss = load_run(f.run_dir, f.checkpoint)  # compiles nothing
  cli.use_compilation_cache(config.get("compilation_cache_dir", ""))  # the run's own cache
  tokenizer = data_lib.run_tokenizer(f.run_dir, config)  # the run's own, as it trained
  prompt = list(tokenizer.encode(prompt_text)) or (
      list(tokenizer.encode("\n")) if tokenizer.name == "bytes" or tokenizer.eot_id is None
      else [tokenizer.eot_id])
  which = ("latest" if f.checkpoint == "latest" else "no val loss recorded: the latest"
           if val_loss is None else f"best by val loss {val_loss:.4f}")
  print(f"# {config.name} from {f.run_dir}: loaded checkpoint step {step} ({which})",
        file=sys.stderr)
  samples = generate(model, params, prompt, f.max_new_tokens, rng=jax.random.key(f.seed),
                     num_samples=f.num_samples, temperature=f.temperature, top_k=f.top_k,
                     top_p=f.top_p, vocab_limit=tokenizer.n_vocab, progress=True)
  for i, sample in enumerate(samples):
    print(tokenizer.decode(sample))
    if i + 1 < len(samples):
      print("---------------")


def cli_main() -> None:
  """`python -m gptjax.sample` and the gptjax-sample console script."""
  cli.entry_point(main, define_flags, __doc__)


if __name__ == "__main__":
  cli_main()
