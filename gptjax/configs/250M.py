"""GPT-250M: Large production models."""

from gptjax.config import get_base_config


def get_config():
  config = get_base_config()
  config.name = "GPT-250M"
  config.description = "Large production models"
  config.n_layer = 16
  config.n_head = 16
  config.n_embd = 1024
  config.block_size = 256
  config.batch_size = 32
  return config
