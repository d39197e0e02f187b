"""GPT-150M: 150 million parameter GPT model."""

from gptjax.config import get_base_config


def get_config():
  config = get_base_config()
  config.name = "GPT-150M"
  config.description = "150 million parameter GPT model"
  config.n_layer = 16
  config.n_head = 12
  config.n_embd = 768
  config.block_size = 256
  config.batch_size = 32
  return config
