"""GPT-Small-Modern: small's shape with RoPE, RMSNorm, ReLU², QK-norm, Muon and warmup-stable-decay
(29,939,328 parameters, small's 30,036,864 - 0.3%).

The head stays tied to wte: at GPT-2's vocabulary an untied head would add 19.3M parameters, 64%
of small; --config.tie_embeddings=False unties it.
"""

from gptjax.config import get_base_config


def get_config():
  config = get_base_config()
  config.name = "GPT-Small-Modern"
  config.description = "small with RoPE, RMSNorm, ReLU², QK-norm, Muon, WSD (tied head)"
  config.n_layer = 6
  config.n_head = 6
  config.n_embd = 384
  config.block_size = 256
  config.batch_size = 32
  config.positions = "rope"
  config.norm = "rmsnorm"
  config.mlp = "relu2"
  config.qk_norm = True
  config.optimizer = "muon"
  config.lr_schedule = "wsd"
  config.lr_decay_fraction = 0.3
  return config
