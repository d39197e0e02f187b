"""nanoGPT's CPU recipe for tiny Shakespeare with the modern options: a learn-more-per-step A/B.

  python -m gptjax.train --config=recipes/shakespeare_char_cpu_modern \
      --config.input_file=../shared/data/tinyshakespeare.txt \
      --config.cpu_devices=2 --config.mesh.data=-1 --config.mesh.fsdp=1

The shape, batch, data and token budget of recipes/shakespeare_char_cpu (4 layers, 4 heads, 128
channels, block 64, batch 12, 2000 iterations), with modded-nanogpt's GPT-2 speedrun changes:
rotary positions (no wpe), RMSNorm, a ReLU² MLP (4C: the GELU MLP's parameters), QK-norm, an
untied head, Muon for the hidden matrices (AdamW for embeddings, head and norms) and a
warmup-stable-decay schedule. 853,376 parameters against the recipe's 828,544 (+3.0%: the untied
head's 32,768 less wpe's 8,192). `python -m gptjax.compare` runs the two side by side.
"""

from gptjax.config import get_base_config


def get_config():
  config = get_base_config()
  config.name = "nanoGPT-Shakespeare-CPU-Modern"
  config.description = "nanoGPT's CPU recipe with RoPE, RMSNorm, ReLU², QK-norm, Muon and WSD"
  # recipes/shakespeare_char_cpu's shape, batch and budget
  config.n_layer = 4
  config.n_head = 4
  config.n_embd = 128
  config.block_size = 64
  config.batch_size = 12
  config.vocab_size = 256  # bytes: tokenizer "auto" (see tiny_char.py)
  config.dropout = 0.0
  config.max_iters = 2000
  config.lr_decay_iters = 2000
  config.eval_interval = 250
  config.eval_iters = 20
  config.log_interval = 50
  # the architecture options (docs/training.md, "Architecture options")
  config.positions = "rope"
  config.norm = "rmsnorm"
  config.mlp = "relu2"
  config.qk_norm = True
  config.tie_embeddings = False
  # Muon on the hidden matrices at its usual rate; AdamW, at the recipe's rate and betas, on the
  # embeddings, the head and the norms; constant after warmup, then down over the last 30%.
  config.optimizer = "muon"
  config.muon_learning_rate = 0.02
  config.learning_rate = 1e-3
  config.min_lr = 1e-4
  config.beta2 = 0.99
  config.warmup_iters = 100
  config.lr_schedule = "wsd"
  config.lr_decay_fraction = 0.3
  return config
