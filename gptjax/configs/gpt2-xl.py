"""GPT-2-XL: OpenAI's 1.5B GPT-2 (gpt2-xl) architecture, to fine-tune from its weights."""

from gptjax.presets import gpt2_finetune_config


def get_config():
  config = gpt2_finetune_config("gpt2-xl")
  config.name = "GPT-2-XL"
  config.description = "OpenAI GPT-2 1.5B; fine-tune: --config.init_from=gpt2-xl (or an HF dir)"
  # 32 sequences of 1024 tokens per update, as micro-batches of 1 that fit one GPU.
  config.batch_size = 1
  config.grad_accum_steps = 32
  # Recomputing activations in the backward pass keeps this size within one accelerator's memory.
  config.remat = "full"
  return config
