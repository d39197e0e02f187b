"""GPT-2-Large: OpenAI's 774M GPT-2 (gpt2-large) architecture, to fine-tune from its weights."""

from gptjax.presets import gpt2_finetune_config


def get_config():
  config = gpt2_finetune_config("gpt2-large")
  config.name = "GPT-2-Large"
  config.description = "OpenAI GPT-2 774M; fine-tune: --config.init_from=gpt2-large (or an HF dir)"
  # 32 sequences of 1024 tokens per update, as micro-batches of 2 that fit one GPU.
  config.batch_size = 2
  config.grad_accum_steps = 16
  # Recomputing activations in the backward pass keeps this size within one accelerator's memory.
  config.remat = "full"
  return config
