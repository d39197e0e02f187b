"""gptjax: a nanoGPT-style GPT trainer in JAX/Flax.

The core is flat (config, presets, model, sharding, step, checkpoint, ...); three wings are
subpackages: gptjax.data (text -> tokens, no JAX), gptjax.planner (memory and time on a target)
and gptjax.training (the run). The commands are thin modules: train, sample, plan, prepare,
convert, show_configs, calculate_params. Importing the package does no work.
"""

__version__ = "0.1.0"
