"""GPT-Tiny-Char: Quick byte-level experiments (any UTF-8 text)."""

from gptjax.config import get_base_config


def get_config():
  config = get_base_config()
  config.name = "GPT-Tiny-Char"
  config.description = "Quick byte-level experiments (any UTF-8 text)"
  config.n_layer = 4
  config.n_head = 4
  config.n_embd = 192
  config.block_size = 128
  config.batch_size = 16
  # UTF-8 bytes: tokenizer "auto" is bytes below GPT-2's vocabulary. Left "auto", not named, so
  # that nanoGPT's train.bin/val.bin (GPT-2 ids) are not read as bytes by accident.
  config.vocab_size = 256
  # nanoGPT's shakespeare_char settings: small models on little data like a higher rate.
  config.learning_rate = 1e-3
  config.min_lr = 1e-4
  config.beta2 = 0.99
  return config
