"""GPT-Tiny-Char-Modern: tiny_char's shape with RoPE, RMSNorm, ReLU², QK-norm, an untied head,
Muon and warmup-stable-decay (1,869,888 parameters, tiny_char's 1,844,928 + 1.4%)."""

from gptjax.configs import tiny_char
from gptjax.presets import modern_config


def get_config():
  config = modern_config(tiny_char.get_config(), tie_embeddings=False)
  config.name = "GPT-Tiny-Char-Modern"
  config.description = "tiny_char with RoPE, RMSNorm, ReLU², QK-norm, untied head, Muon, WSD"
  return config
