"""Text -> token shards, once, on every core: `python -m gptjax.prepare` (or gptjax-prepare).

  python -m gptjax.prepare --input='corpus/**/*.txt' --tokenizer=gpt2 --out_dir=data/corpus
  python -m gptjax.prepare --input=docs.jsonl --text_field=text --tokenizer=tokenizer.json \\
      --out_dir=data/docs
  python -m gptjax.prepare --hf_dataset=openwebtext --tokenizer=gpt2 --out_dir=data/owt
  python -m gptjax.train --config=150M --config.data_dir=data/corpus

Inputs: text files (one document each), globs, directories, JSON-lines files (one document a line)
and, with the `datasets` package and network, a Hugging Face dataset, streamed. Tokenizers: bytes,
gpt2 (tiktoken) or a Hugging Face tokenizer.json. Output: <out_dir>/train-NNNNN.bin and
val-NNNNN.bin (uint16, or uint32 for vocabularies over 65,536) and meta.json, written last: a
killed prepare leaves no meta.json, and running the command again starts over. Run again
unchanged, it does nothing.
"""

from __future__ import annotations

from gptjax import cli
from gptjax.errors import UserError


def define_flags(values) -> None:
  from absl import flags
  flags.DEFINE_multi_string("input", [], "A text file (one document), a .jsonl/.ndjson file (one "
                            "document a line), a directory (every file below it) or a glob; "
                            "repeat for more.",
                            flag_values=values)
  flags.DEFINE_string("tokenizer",
                      None, "bytes, gpt2, or the path of a Hugging Face "
                      "tokenizer.json.",
                      flag_values=values)
  flags.DEFINE_string("out_dir",
                      None, "Directory to write the shards and meta.json into (new or "
                      "empty, or one this command wrote).",
                      flag_values=values)
  flags.DEFINE_string("text_field",
                      "text", "The field holding the text, in JSON lines and "
                      "dataset rows.",
                      flag_values=values)
  flags.DEFINE_string("hf_dataset",
                      "", "A Hugging Face dataset name, streamed instead of "
                      "--input (needs the datasets package and network).",
                      flag_values=values)
  flags.DEFINE_string("hf_config",
                      "",
                      "The dataset's configuration name, if it has several.",
                      flag_values=values)
  flags.DEFINE_string("hf_split", "train", "The dataset's split to read.", flag_values=values)
  flags.DEFINE_float("val_fraction",
                     0.1, "Validation's share: with one document, its tail; with several, whole "
                     "documents drawn with --seed until validation holds at least this share of "
                     "the text (at most about 10M tokens; at least 2 documents of 20 or more).",
                     flag_values=values)
  flags.DEFINE_integer("seed", 2357, "Seed of the validation draw.", flag_values=values)
  flags.DEFINE_integer("num_proc", 0, "Worker processes; 0 = every core.", flag_values=values)
  flags.DEFINE_integer("shard_tokens", 100_000_000, "Tokens per shard file.", flag_values=values)
  flags.DEFINE_string("tokenizer_path",
                      "", "GPT-2 ranks file (gpt2.tiktoken) for offline use; "
                      "'' tries $GPTJAX_GPT2_TIKTOKEN, then tiktoken's cache.",
                      flag_values=values)
  flags.DEFINE_string("eot_token",
                      "auto", "A tokenizer.json's end-of-text token; auto looks for "
                      "<|endoftext|>, </s>, ...; none joins documents without one.",
                      flag_values=values)
  flags.DEFINE_bool("force",
                    False, "Tokenize again even when out_dir is already prepared from "
                    "the same inputs.",
                    flag_values=values)


def main(f) -> None:
  cli.status("reading the inputs")
  from gptjax.data.prepare import Options, prepare, summary
  if not f.tokenizer:
    raise UserError("--tokenizer is required: bytes, gpt2 or path/to/tokenizer.json.")
  if not f.out_dir:
    raise UserError("--out_dir is required, e.g. --out_dir=data/my_corpus.")
  if bool(f.input) == bool(f.hf_dataset):
    raise UserError("give the text with --input=PATH_OR_GLOB (repeatable) or --hf_dataset=NAME, "
                    "one of the two.")
  for name, ok, words, good in (("shard_tokens", f.shard_tokens
                                 >= 1, ">= 1", "100000000"), ("num_proc", f.num_proc
                                                              >= 0, ">= 0 (0 = every core)", "0")):
    if not ok:
      raise UserError(f"--{name}={f[name].value} is outside its range: {words}. Fix: e.g. "
                      f"--{name}={good}.")
  options = Options(inputs=list(f.input),
                    tokenizer=f.tokenizer,
                    out_dir=f.out_dir,
                    text_field=f.text_field,
                    hf_dataset=f.hf_dataset,
                    hf_config=f.hf_config,
                    hf_split=f.hf_split,
                    val_fraction=f.val_fraction,
                    seed=f.seed,
                    num_proc=f.num_proc,
                    shard_tokens=f.shard_tokens,
                    tokenizer_path=f.tokenizer_path,
                    eot_token=f.eot_token,
                    force=f.force)
  print(summary(prepare(options), f.out_dir))


def cli_main(argv: list[str] | None = None) -> None:
  """`python -m gptjax.prepare` and the gptjax-prepare console script."""
  cli.run_command(main, define_flags, __doc__, uses_jax=False, argv=argv)


if __name__ == "__main__":
  cli_main()
