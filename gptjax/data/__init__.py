"""Text in, tokens out: no JAX in this wing.

  tokenizer   bytes, GPT-2 BPE (tiktoken), any Hugging Face tokenizer.json
  sources     where documents come from (files, JSON lines, datasets), cut into tasks
  shards      the token-shard format: writer, reader (memmaps), meta.json
  prepare     text -> shards on every core (the library half of `python -m gptjax.prepare`)
  dataset     a run's token store: its config's corpus, tokenized once, checked once
  batches     random windows as a pure function of (seed, step), read ahead in threads
"""
