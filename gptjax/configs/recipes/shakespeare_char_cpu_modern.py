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

from gptjax.configs.recipes import shakespeare_char_cpu
from gptjax.presets import modern_config


def get_config():
  # the CPU recipe's shape, batch, rates (AdamW's, on embeddings, head and norms) and budget;
  # Muon at its usual rate (muon_learning_rate 0.02) on the hidden matrices
  config = modern_config(shakespeare_char_cpu.get_config(), tie_embeddings=False)
  config.name = "nanoGPT-Shakespeare-CPU-Modern"
  config.description = "nanoGPT's CPU recipe with RoPE, RMSNorm, ReLU², QK-norm, Muon and WSD"
  return config
