"""Sample text from a trained run, or from GPT-2's weights: `python -m gptjax.sample`.

  python -m gptjax.sample --run_dir out/tiny_char --prompt "def " --max_new_tokens 300
  python -m gptjax.sample --run_dir out/dante_150M --prompt "Nel mezzo" --num_samples 3 --top_p 0.95
  python -m gptjax.sample --init_from gpt2 --prompt "Hello" --stop_at_eot   # no conversion first

The whole generation runs on the device in two compiled programs (gptjax/generate.py), and the
first sample streams to the terminal as its tokens come. --checkpoint best takes the best
checkpoint by val loss; --prompt FILE:path reads the prompt from a file.
"""

from __future__ import annotations

import sys
import time

from gptjax import cli
from gptjax.errors import UserError

# nanoGPT's sample.py flags whose gptjax names differ.
NANOGPT_FLAGS = {"out_dir": "--run_dir", "start": "--prompt"}


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


def load_model(run_dir: str, which: str, init_from: str):
  """(model, params, config, a line saying what was loaded) from a run directory's checkpoint or,
  with `init_from`, straight from Hugging Face GPT-2 weights (a directory, or a hub name found in
  the local hub cache or downloaded). Orbax is imported only for a run directory."""
  if init_from:
    from gptjax import hf_gpt2
    from gptjax.config import get_base_config
    directory = hf_gpt2.resolve_hf(init_from, flag="--init_from")
    model, params = hf_gpt2.load_hf_gpt2(directory)
    config = get_base_config()
    config.update(dict(model.config.architecture(), name=init_from, init_from=directory))
    return model, params, config, f"{init_from}: Hugging Face GPT-2 weights from {directory}"
  from gptjax.checkpoint import load_run
  model, params, config, step, val_loss = load_run(run_dir, which)
  loaded = ("latest" if which == "latest" else
            "as asked" if which.isdigit() else "no val loss recorded: the latest"
            if val_loss is None else f"best by val loss {val_loss:.4f}")
  return (model, params, config,
          f"{config.name} from {run_dir}: loaded checkpoint step {step} ({loaded})")


def tokenizer_for(config, run_dir: str | None, tokenizer_path: str = ""):
  """The tokenizer of the loaded model and its end-of-text token (None where it has none): the
  one place sample.py looks them up. A run's is the one it trained with (its data.json); GPT-2's
  ranks come from `tokenizer_path` (--tokenizer_path), else the run's own."""
  from gptjax.config import resolve_tokenizer
  from gptjax.data import dataset, tokenizer as tokenizer_lib
  tokenizer = (dataset.run_tokenizer(run_dir, config, tokenizer_path)
               if run_dir else tokenizer_lib.get_tokenizer(resolve_tokenizer(config),
                                                           tokenizer_path or config.tokenizer_path,
                                                           flag="--tokenizer_path"))
  return tokenizer, None if tokenizer.name == "bytes" else tokenizer.eot_id


def define_flags(values) -> None:
  from absl import flags
  flags.DEFINE_string("run_dir", None, "Run directory, e.g. out/tiny_char.", flag_values=values)
  flags.DEFINE_string("init_from",
                      "", "Instead of --run_dir: Hugging Face GPT-2 weights, a "
                      "directory as save_pretrained writes it, or a hub name (gpt2, "
                      "gpt2-medium, gpt2-large, gpt2-xl) from the hub cache or downloaded.",
                      flag_values=values)
  flags.DEFINE_enum("checkpoint",
                    "latest", ["latest", "best"],
                    "Which checkpoint: the latest, or the best by val loss.",
                    flag_values=values)
  flags.DEFINE_string("prompt",
                      "", "Text to continue; FILE:path reads it from a file. Empty: "
                      "start from a newline (bytes) or <|endoftext|> (GPT-2).",
                      flag_values=values)
  flags.DEFINE_integer("max_new_tokens", 500, "Tokens to generate per sample.", flag_values=values)
  flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 = greedy.", flag_values=values)
  flags.DEFINE_integer("top_k",
                       200,
                       "Keep only the k most likely tokens; 0 = all.",
                       flag_values=values)
  flags.DEFINE_float("top_p",
                     1.0,
                     "Nucleus sampling: keep tokens up to this probability.",
                     flag_values=values)
  flags.DEFINE_integer("num_samples",
                       1,
                       "Independent samples, decoded as one batch.",
                       flag_values=values)
  flags.DEFINE_integer("seed", 1337, "Random seed.", flag_values=values)
  flags.DEFINE_multi_string("stop", [], "Stop a sample at this text (not printed); repeat the "
                            "flag for several.",
                            flag_values=values)
  flags.DEFINE_string("tokenizer_path",
                      "", "GPT-2 ranks file (gpt2.tiktoken) for offline use; '' tries the run's "
                      "own, $GPTJAX_GPT2_TIKTOKEN, then tiktoken's cache.",
                      flag_values=values)
  flags.DEFINE_bool("stop_at_eot",
                    False, "Stop a sample at the end-of-text token (GPT-2's "
                    "<|endoftext|>).",
                    flag_values=values)


# The flags with a range: (what holds, the range in words, a value that works).
RANGES = {
    "max_new_tokens": (lambda v: v >= 1, ">= 1", 500),
    "temperature": (lambda v: v >= 0, ">= 0 (0 = greedy)", 0.8),
    "top_k": (lambda v: v >= 0, ">= 0 (0 = all tokens)", 200),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1]", 0.95),
    "num_samples": (lambda v: v >= 1, ">= 1", 1),
}


def check_ranges(f) -> None:
  """A UserError naming every flag out of its range, each with the range and a value that works."""
  wrong = [(name, f[name].value, words, good)
           for name, (ok, words, good) in RANGES.items()
           if not ok(f[name].value)]
  if wrong:
    raise UserError("; ".join(
        f"--{name}={value} is outside its range: {words}" for name, value, words, _ in wrong) +
                    ". Fix: e.g. " + " ".join(f"--{name}={good}" for name, _, _, good in wrong) +
                    ".")


def main(f) -> None:
  from gptjax import compile_cache
  from gptjax.generate import Sampling, Transcript, decode_params, on_this_device, stream
  if bool(f.run_dir) == bool(f.init_from):
    raise UserError("give one of --run_dir (a gptjax run, e.g. --run_dir out/tiny_char) or "
                    "--init_from (Hugging Face GPT-2 weights, e.g. --init_from gpt2).")
  check_ranges(f)
  if f.stop and not all(f.stop):
    raise UserError("--stop: an empty text stops nothing. Fix: give the text to stop at, e.g. "
                    "--stop=$'\\n\\n'.")
  prompt_text = read_prompt(f.prompt)  # before loading anything
  start = time.perf_counter()
  cli.status("loading the model")
  model, params, config, loaded = load_model(f.run_dir, f.checkpoint, f.init_from)
  compile_cache.use(config.get("compilation_cache_dir", ""))  # training's cache
  tokenizer, end_of_text = tokenizer_for(config, f.run_dir, f.tokenizer_path)
  if f.stop_at_eot and end_of_text is None:
    raise UserError(f"--stop_at_eot: the {tokenizer.name} tokenizer has no end-of-text token. "
                    f"Fix: stop at a text instead, e.g. --stop=$'\\n\\n'.")
  prompt = list(tokenizer.encode(prompt_text)) or (list(tokenizer.encode("\n"))
                                                   if end_of_text is None else [end_of_text])
  stop_token = end_of_text if f.stop_at_eot else None
  print(f"# {loaded}", file=sys.stderr, flush=True)
  model = on_this_device(model)
  params = decode_params(model, params)
  load_s = time.perf_counter() - start
  sampling = Sampling(f.temperature, f.top_k, f.top_p, tokenizer.n_vocab,
                      -1 if stop_token is None else stop_token)
  transcripts = [Transcript(tokenizer, prompt, f.stop, stop_token) for _ in range(f.num_samples)]
  timings, new_tokens = {}, 0
  cli.status("compiling the sampler (or loading it from the compilation cache)")
  loop_start = time.perf_counter()
  for tokens in stream(model,
                       params,
                       prompt,
                       f.max_new_tokens,
                       seed=f.seed,
                       num_samples=f.num_samples,
                       sampling=sampling,
                       chunk_seconds=0.1,
                       timings=timings):
    new_tokens += tokens.shape[1]
    pieces = [transcript.add(row) for transcript, row in zip(transcripts, tokens)]
    sys.stdout.write(pieces[0])  # the first sample streams; the others follow it
    sys.stdout.flush()
    if all(transcript.stopped for transcript in transcripts):
      break
  decode_s = time.perf_counter() - loop_start - timings["compile_s"]
  print(transcripts[0].finish())
  for transcript in transcripts[1:]:
    transcript.finish()
    print("---------------")
    print(transcript.text)
  print(
      f"# {f.num_samples} sample(s) x {new_tokens} new tokens in {decode_s:.2f} s: "
      f"{f.num_samples * new_tokens / decode_s:,.1f} tokens/s, "
      f"{1000 * decode_s / new_tokens:.2f} ms per token step | load {load_s:.2f} s, compile "
      f"{timings['compile_s']:.2f} s ({timings['programs_from_cache']} of 2 programs from the "
      f"compilation cache)",
      file=sys.stderr)


def cli_main(argv: list[str] | None = None) -> None:
  """`python -m gptjax.sample` and the gptjax-sample console script."""
  cli.run_command(main, define_flags, __doc__, aliases=NANOGPT_FLAGS, argv=argv)


if __name__ == "__main__":
  cli_main()
