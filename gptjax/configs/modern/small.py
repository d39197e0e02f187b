"""GPT-Small-Modern: small's shape with RoPE, RMSNorm, ReLU², QK-norm, Muon and warmup-stable-decay
(29,939,328 parameters, small's 30,036,864 - 0.3%).

The head stays tied to wte: at GPT-2's vocabulary an untied head would add 19.3M parameters, 64%
of small; --config.tie_embeddings=False unties it.
"""

from gptjax.configs import small
from gptjax.presets import modern_config


def get_config():
  config = modern_config(small.get_config(), tie_embeddings=True)
  config.name = "GPT-Small-Modern"
  config.description = "small with RoPE, RMSNorm, ReLU², QK-norm, Muon, WSD (tied head)"
  return config
