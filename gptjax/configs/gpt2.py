"""GPT-2: OpenAI's 124M GPT-2 (gpt2) architecture, to fine-tune from its weights."""

from gptjax.presets import gpt2_finetune_config


def get_config():
  config = gpt2_finetune_config("gpt2")
  config.name = "GPT-2"
  config.description = "OpenAI GPT-2 124M; fine-tune: --config.init_from=gpt2 (or an HF dir)"
  # 32 sequences of 1024 tokens per update, as micro-batches of 8 that fit one GPU.
  config.batch_size = 8
  config.grad_accum_steps = 4
  return config
