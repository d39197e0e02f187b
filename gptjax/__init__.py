"""gptjax: a nanoGPT-style GPT trainer in JAX/Flax.

Modules (data flows top to bottom): config -> params / model -> sharding -> data -> optim ->
checkpoint -> train -> sample. Importing the package does no work.
"""

__version__ = "0.1.0"
