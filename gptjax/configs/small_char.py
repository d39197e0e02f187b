"""GPT-Small-Char: Byte-level experiments and development."""

from gptjax.config import get_base_config


def get_config():
  config = get_base_config()
  config.name = "GPT-Small-Char"
  config.description = "Byte-level experiments and development"
  config.n_layer = 6
  config.n_head = 6
  config.n_embd = 384
  config.block_size = 256
  config.batch_size = 32
  # UTF-8 bytes: tokenizer "auto" is bytes below GPT-2's vocabulary. Left "auto", not named, so
  # that nanoGPT's train.bin/val.bin (GPT-2 ids) are not read as bytes by accident.
  config.vocab_size = 256
  # nanoGPT's shakespeare_char settings: small models on little data like a higher rate.
  config.learning_rate = 1e-3
  config.min_lr = 1e-4
  config.beta2 = 0.99
  return config
