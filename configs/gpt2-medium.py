"""GPT-2-Medium: OpenAI's 355M GPT-2 (gpt2-medium) architecture, to fine-tune from its weights."""

from gptjax.config import get_base_config


def get_config():
  config = get_base_config()
  config.name = "GPT-2-Medium"
  config.description = "OpenAI GPT-2 355M; fine-tune: --config.init_from=gpt2-medium (or an HF dir)"
  config.n_layer = 24
  config.n_head = 16
  config.n_embd = 1024
  config.block_size = 1024
  config.vocab_size = 50257  # GPT-2's own, unpadded, so HF weights import and export exactly
  config.bias = True
  config.tokenizer = "gpt2"
  # Fine-tuning defaults, after nanoGPT's finetune_shakespeare: a rate 20x below pretraining's, so
  # the updates adjust GPT-2's weights rather than overwrite them. Dropout off as there; try 0.1
  # (GPT-2's pretraining value) when a small corpus starts to overfit.
  config.dropout = 0.0
  config.learning_rate = 3e-5
  config.min_lr = 3e-6
  config.warmup_iters = 20
  config.max_iters = 1000
  config.eval_interval = 100
  config.eval_iters = 40
  # 32 sequences of 1024 tokens per update, as micro-batches of 4 that fit one GPU.
  config.batch_size = 4
  config.grad_accum_steps = 8
  return config
