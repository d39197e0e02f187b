"""GPT-200M: Larger production models."""

from gptjax.config import get_base_config


def get_config():
  config = get_base_config()
  config.name = "GPT-200M"
  config.description = "Larger production models"
  config.n_layer = 16
  config.n_head = 14
  config.n_embd = 896
  config.block_size = 256
  config.batch_size = 32
  return config
