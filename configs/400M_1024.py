"""GPT-400M-1024: DESCRIPTION."""

from gptjax.config import get_base_config


def get_config():
  config = get_base_config()
  config.name = "GPT-400M-1024"
  config.description = "DESCRIPTION"
  config.n_layer = 28
  config.n_head = 16
  config.n_embd = 1024
  config.block_size = 1024
  config.batch_size = 8
  # Accelerator settings (README, "Will it fit?"): bfloat16 compute (params and optimizer state stay
  # float32) and remat, which the fit planner shows keep it on the devices named above.
  config.dtype = "bfloat16"
  config.remat = True
  return config
