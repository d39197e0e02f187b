"""GPT-Tiny-Char-Modern: tiny_char's shape with RoPE, RMSNorm, ReLU², QK-norm, an untied head,
Muon and warmup-stable-decay (1,869,888 parameters, tiny_char's 1,844,928 + 1.4%)."""

from gptjax.config import get_base_config


def get_config():
  config = get_base_config()
  config.name = "GPT-Tiny-Char-Modern"
  config.description = "tiny_char with RoPE, RMSNorm, ReLU², QK-norm, untied head, Muon, WSD"
  config.n_layer = 4
  config.n_head = 4
  config.n_embd = 192
  config.block_size = 128
  config.batch_size = 16
  config.vocab_size = 256  # bytes (tokenizer "auto")
  config.positions = "rope"
  config.norm = "rmsnorm"
  config.mlp = "relu2"
  config.qk_norm = True
  config.tie_embeddings = False
  config.optimizer = "muon"
  # tiny_char's AdamW settings, for the embeddings, the head and the norms
  config.learning_rate = 1e-3
  config.min_lr = 1e-4
  config.beta2 = 0.99
  config.lr_schedule = "wsd"
  config.lr_decay_fraction = 0.3
  return config
