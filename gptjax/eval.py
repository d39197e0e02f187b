"""Evaluate a trained run, or GPT-2's weights, on a whole validation split: `python -m gptjax.eval`.

  python -m gptjax.eval --run_dir out/tiny_char                     # the run's own val split
  python -m gptjax.eval --run_dir out/tiny_char --checkpoint best   # or latest, or a step: 1500
  python -m gptjax.eval --run_dir out/small --input_file dante.txt  # another corpus (its last 10%)
  python -m gptjax.eval --run_dir out/small --data_dir data/owt     # a gptjax.prepare directory
  python -m gptjax.eval --init_from gpt2 --input_file dante.txt     # Hugging Face GPT-2

Prints the loss (nats per token), the tokens predicted and val bits per byte: the loss in bits over
the bytes of UTF-8 text the tokens stand for, which compares models with different tokenizers (a
byte model, GPT-2's BPE, a tokenizer.json) on one corpus. Every token of the split after the first
is predicted once, in windows of block_size (no sampling: the same figure every time). --json
prints the figures as one JSON object instead.
"""

from __future__ import annotations

import json
import os
import sys

from gptjax import cli
from gptjax.errors import DataError, UserError


def define_flags(values) -> None:
  from absl import flags
  flags.DEFINE_string("run_dir", None, "Run directory, e.g. out/tiny_char.", flag_values=values)
  flags.DEFINE_string("init_from",
                      "", "Instead of --run_dir: Hugging Face GPT-2 weights, a directory as "
                      "save_pretrained writes it, or a hub name (gpt2, gpt2-medium, ...); needs "
                      "--input_file or --data_dir.",
                      flag_values=values)
  flags.DEFINE_string("checkpoint",
                      "latest",
                      "Which checkpoint: latest, best (by val loss) or a step number.",
                      flag_values=values)
  flags.DEFINE_string("data_dir",
                      "", "Evaluate on this gptjax.prepare (or nanoGPT) data directory's val "
                      "split; made with the run's tokenizer.",
                      flag_values=values)
  flags.DEFINE_string("input_file",
                      "", "Evaluate on this UTF-8 text's validation part (its last 1 - train_split "
                      "of the run's config, 10% by default; tokenized once into a token cache "
                      "beside the run directory).",
                      flag_values=values)
  flags.DEFINE_integer("batch_size", 64, "Windows evaluated at once.", flag_values=values)
  flags.DEFINE_bool("json", False, "Print the figures as one JSON object.", flag_values=values)


def check_flags(f) -> None:
  """One clear error for each bad combination, before anything is loaded."""
  if bool(f.run_dir) == bool(f.init_from):
    raise UserError("give one of --run_dir (a gptjax run, e.g. --run_dir out/tiny_char) or "
                    "--init_from (Hugging Face GPT-2 weights, e.g. --init_from gpt2).")
  if f.data_dir and f.input_file:
    raise UserError(f"--data_dir={f.data_dir!r} and --input_file={f.input_file!r} are both set. "
                    f"Fix: evaluate on one of them.")
  if f.init_from and not (f.data_dir or f.input_file):
    raise UserError("--init_from needs text to evaluate on. Fix: add --input_file=<a UTF-8 text> "
                    "or --data_dir=<a directory of `python -m gptjax.prepare --tokenizer=gpt2`>.")
  if f.checkpoint not in ("latest", "best") and not f.checkpoint.isdigit():
    raise UserError(f"--checkpoint={f.checkpoint!r} is not a checkpoint. Fix: --checkpoint=latest, "
                    f"--checkpoint=best or a step number, e.g. --checkpoint=1000.")
  if f.init_from and f.checkpoint != "latest":
    raise UserError("--checkpoint goes with --run_dir: Hugging Face weights have no steps. Fix: "
                    "drop --checkpoint.")
  if f.batch_size < 1:
    raise UserError(
        f"--batch_size={f.batch_size} is out of range. Fix: 1 or more, e.g. --batch_size=64.")


def open_validation(f, config, tokenizer):
  """(val tokens, where they come from): the run's own data, or --data_dir / --input_file with
  the model's tokenizer (a data directory made with another tokenizer is an error)."""
  from gptjax import store
  from gptjax.data import dataset, shards
  config = config.copy_and_resolve_references()
  if f.data_dir or f.input_file:
    config.data_dir, config.input_file = f.data_dir, f.input_file
    # input_file's tokens are cached where the run's were: beside the run directory (a bucket's
    # runs keep theirs on the local disk, dataset.open_tokens).
    config.out_dir = (f.run_dir.rstrip("/").rsplit("/", 1)[0] if store.is_url(f.run_dir or "") else
                      os.path.dirname(os.path.normpath(f.run_dir)) if f.run_dir else "out")
    source = f"--data_dir {f.data_dir}" if f.data_dir else f"--input_file {f.input_file}"
    # A data directory's own tokenizer first: open_tokens would check it against the run's config
    # and name --config fields, which eval has not.
    meta = shards.read_meta(f.data_dir) if f.data_dir and os.path.isdir(f.data_dir) else None
    if meta:
      check_same_tokenizer(source, meta["tokenizer"], tokenizer)
    data = dataset.open_tokens(config)
  else:
    recorded = store.join(f.run_dir, dataset.RUN_DATA)
    if not store.isfile(recorded):
      raise DataError(f"run directory {f.run_dir!r} does not say what data it trained on (no "
                      f"{dataset.RUN_DATA}). Fix: name the text with --input_file or --data_dir.")
    data_dir = json.loads(store.read_text(recorded))["data_dir"]
    data = dataset.open_data_dir(data_dir, config, tokenizer=tokenizer)
    source = f"the run's data ({data_dir})"
  check_same_tokenizer(source, data.tokenizer.spec(), tokenizer)
  return data.val, source


def check_same_tokenizer(source: str, spec: dict, tokenizer) -> None:
  """A DataError unless the tokens of `source` (their tokenizer's spec) are the model's."""
  from gptjax.data import tokenizer as tokenizer_lib
  model = tokenizer.spec()
  if not tokenizer_lib.same_tokenizer(spec, model):
    name = model["path"] if model["kind"] == "hf" else model["kind"]
    raise DataError(f"{source} holds tokens of {tokenizer_lib.describe(spec)}; the model reads "
                    f"{tokenizer_lib.describe(model)}. Fix: prepare the text with the model's "
                    f"tokenizer (`python -m gptjax.prepare --input=... --tokenizer={name} "
                    f"--out_dir=...`), or give --input_file.")


def main(f) -> None:
  from gptjax import compile_cache
  from gptjax.sample import load_model, tokenizer_for
  from gptjax.training.evaluate import evaluate_split
  check_flags(f)
  model, params, config, loaded = load_model(f.run_dir, f.checkpoint, f.init_from)
  compile_cache.use(config.get("compilation_cache_dir", ""))  # training's cache
  tokenizer, _ = tokenizer_for(config, f.run_dir)
  tokens, source = open_validation(f, config, tokenizer)
  if not f.json:
    print(f"# {loaded}", file=sys.stderr, flush=True)
  result = evaluate_split(model, params, tokens, tokenizer, f.batch_size)
  if f.json:
    print(json.dumps(dict(result, source=source, model=loaded)))
    return
  bpb = "n/a (no text)" if result["bpb"] is None else f"{result['bpb']:.4f}"
  print(f"val loss {result['loss']:.4f} | val bpb {bpb} | {result['tokens']:,} tokens "
        f"({result['bytes']:,} bytes of text, {tokenizer.name} tokenizer) | {source}")


def cli_main(argv: list[str] | None = None) -> None:
  """`python -m gptjax.eval` and the gptjax-eval console script."""
  cli.run_command(main, define_flags, __doc__, argv=argv)


if __name__ == "__main__":
  cli_main()
