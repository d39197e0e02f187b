"""nanoGPT's published CPU recipe for tiny Shakespeare (its README's "I only have a macbook" run).

  python -m gptjax.train --config=recipes/shakespeare_char_cpu \
      --config.input_file=../shared/data/tinyshakespeare.txt \
      --config.cpu_devices=2 --config.mesh.data=-1 --config.mesh.fsdp=1

The last line splits a 2-core CPU into two XLA devices for data parallelism, faster than one
device with two threads (docs/performance.md).

4 layers, 4 heads, 128 channels, block 64, batch 12, 2000 iterations, lr 1e-3 decayed to 1e-4 over
2000 iterations, warmup 100, beta2 0.99, dropout 0. nanoGPT reaches val loss ~1.88 with it.
"""

from gptjax.config import get_base_config


def get_config():
  config = get_base_config()
  config.name = "nanoGPT-Shakespeare-CPU"
  config.description = "nanoGPT's CPU recipe on tiny Shakespeare, byte-level"
  config.n_layer = 4
  config.n_head = 4
  config.n_embd = 128
  config.block_size = 64
  config.batch_size = 12
  config.vocab_size = 256  # bytes: tokenizer "auto" (see tiny_char.py)
  config.dropout = 0.0
  config.max_iters = 2000
  config.lr_decay_iters = 2000
  config.learning_rate = 1e-3
  config.min_lr = 1e-4
  config.warmup_iters = 100
  config.beta2 = 0.99
  config.eval_interval = 250
  config.eval_iters = 20  # as nanoGPT's command: its wall time includes these evaluations
  config.log_interval = 50
  return config
