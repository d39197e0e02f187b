"""GPT-2-Medium: OpenAI's 355M GPT-2 (gpt2-medium) architecture, to fine-tune from its weights."""

from gptjax.presets import gpt2_finetune_config


def get_config():
  config = gpt2_finetune_config("gpt2-medium")
  config.name = "GPT-2-Medium"
  config.description = "OpenAI GPT-2 355M; fine-tune: --config.init_from=gpt2-medium (or an HF dir)"
  # 32 sequences of 1024 tokens per update, as micro-batches of 4 that fit one GPU.
  config.batch_size = 4
  config.grad_accum_steps = 8
  return config
