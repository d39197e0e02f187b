"""GPT-Tiny: Quick experiments, testing code changes."""

from gptjax.config import get_base_config


def get_config():
  config = get_base_config()
  config.name = "GPT-Tiny"
  config.description = "Quick experiments, testing code changes"
  config.n_layer = 4
  config.n_head = 4
  config.n_embd = 192
  config.block_size = 128
  config.batch_size = 16
  return config
