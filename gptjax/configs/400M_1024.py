"""GPT-400M-1024: High-context training on one 24 GB GPU or one TPU v5e chip (bf16, remat)."""

from gptjax.config import get_base_config


def get_config():
  config = get_base_config()
  config.name = "GPT-400M-1024"
  config.description = "High-context training on one 24 GB GPU or one TPU v5e chip (bf16, remat)"
  config.n_layer = 28
  config.n_head = 16
  config.n_embd = 1024
  config.block_size = 1024
  config.batch_size = 8
  config.dtype = "bfloat16"  # params and AdamW state stay float32; see docs/planner.md
  config.remat = "full"
  return config
