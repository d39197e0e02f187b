"""GPT-500M-1024: High-context training on 24GB+ GPUs."""

from gptjax.config import get_base_config


def get_config():
  config = get_base_config()
  config.name = "GPT-500M-1024"
  config.description = "High-context training on 24GB+ GPUs"
  config.n_layer = 24
  config.n_head = 16
  config.n_embd = 1280
  config.block_size = 1024
  config.batch_size = 8
  # Accelerator settings (README, "Will it fit?"): bfloat16 compute (params and optimizer state stay
  # float32) and remat, which the fit planner shows keep it on the devices named above.
  config.dtype = "bfloat16"
  config.remat = True
  return config
