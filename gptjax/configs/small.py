"""GPT-Small: Most experiments, development."""

from gptjax.config import get_base_config


def get_config():
  config = get_base_config()
  config.name = "GPT-Small"
  config.description = "Most experiments, development"
  config.n_layer = 6
  config.n_head = 6
  config.n_embd = 384
  config.block_size = 256
  config.batch_size = 32
  return config
