"""GPT-400M-1024: High-context training on one 24 GB GPU or one TPU v5e chip (bf16, remat).

Set for accelerators: no dropout and the device's fused attention kernel (see get_config).
"""

from gptjax.config import get_base_config


def get_config():
  config = get_base_config()
  config.name = "GPT-400M-1024"
  config.description = ("High-context training on one 24 GB GPU or one TPU v5e chip "
                        "(bf16, fused attention, dropout 0, remat)")
  config.n_layer = 28
  config.n_head = 16
  config.n_embd = 1024
  config.block_size = 1024
  config.batch_size = 8
  config.dtype = "bfloat16"  # params and AdamW state stay float32; see docs/planner.md
  # Accelerator settings, in one place (python -m gptjax.plan --config=400M_1024 --search
  # --target=tpu-v5e-1 weighs them against the alternatives): no dropout, as modern pre-training
  # runs (fused attention kernels have no attention-weight dropout); "auto": the device's fastest
  # attention (splash on TPUs, cuDNN on GPUs in 16 bits, XLA's einsum on CPUs); remat "full":
  # each block's input kept, the rest recomputed in the backward pass.
  config.dropout = 0.0
  config.attention = "auto"
  config.remat = "full"
  # The blocks unrolled: nn.scan (True) compiles ~2x faster but keeps ~10% more memory, and the
  # planner prices a scanned step less surely; checkpoints restore across either.
  config.scan_layers = False
  return config
