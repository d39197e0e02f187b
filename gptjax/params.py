"""Parameter accounting and layouts: the analytic count per component, the count of the real
pytree, FLOPs, and the conversion between the unrolled and the scanned parameter layouts.

The analytic count is written from the architecture alone; `count_pytree_params` initialises the
model abstractly with `jax.eval_shape` (no memory is allocated, so 500M_1024 takes milliseconds).
Tests hold the two equal for every preset, in both layouts.

Layouts: unrolled, the blocks are `h_0` ... `h_{L-1}` (GPT-2's names); with scan_layers they are
one `h` whose every leaf has a leading layers axis of L. `to_layout` converts any pytree holding
parameter dicts (the parameters, AdamW's moments) from one to the other.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gptjax.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class ParamBreakdown:
  """Exact parameter counts of a GPT, by component."""
  token_embedding: int  # wte: V x C, also the output head when tied (tie_embeddings)
  position_embedding: int  # wpe: T x C (learned positions; 0 with rope)
  attention: int  # per layer: c_attn (C x 3C) or GQA's c_q (C x C) and c_kv (C x 2 H_kv D), +
  # c_proj (C x C), with biases if any
  mlp: int  # per layer: c_fc (C x F, swiglu C x 2F) + c_proj (F x C), with biases if any
  layer_norms: int  # per layer: ln_1 + ln_2 (scale, and bias if any), qk_norm's two D scales
  final_norm: int  # ln_f
  n_layer: int
  output_head: int = 0  # an untied head's lm_head: C x V

  @property
  def per_layer(self) -> int:
    return self.attention + self.mlp + self.layer_norms

  @property
  def total(self) -> int:
    return (self.token_embedding + self.position_embedding + self.n_layer * self.per_layer +
            self.final_norm + self.output_head)

  @property
  def non_embedding(self) -> int:
    """nanoGPT's get_num_params(non_embedding=True): the total less the position embeddings.

    The token embeddings stay in when tied to the output head, since they do the work of a
    layer; with an untied head they are a lookup, and it is lm_head that stays in.
    """
    return self.total - self.position_embedding - (self.token_embedding if self.output_head else 0)


def count_params(config: ModelConfig) -> ParamBreakdown:
  """The analytic parameter count of `config`'s architecture."""
  C, b, F = config.n_embd, int(config.bias), config.mlp_width
  norm = C + b * C if config.norm == "layernorm" else C  # RMSNorm: a scale, never a bias
  kv = 2 * config.kv_heads * config.head_dim  # the keys' and values' width
  up = 2 * F if config.mlp == "swiglu" else F  # swiglu's c_fc holds the gate and up matrices
  return ParamBreakdown(
      token_embedding=config.vocab_size * C,
      position_embedding=config.block_size * C if config.positions == "learned" else 0,
      attention=(C * (C + kv) + b * (C + kv)) + (C * C + b * C),
      mlp=(C * up + b * up) + (F * C + b * C),
      layer_norms=2 * norm + 2 * config.head_dim * config.qk_norm,
      final_norm=norm,
      n_layer=config.n_layer,
      output_head=0 if config.tie_embeddings else C * config.vocab_size,
  )


def abstract_params(config: ModelConfig):
  """The parameter pytree as ShapeDtypeStructs (boxed with logical axis names), via eval_shape."""
  from gptjax.model import GPT  # model imports config only; kept local so tools start fast

  model = GPT(config)
  tokens = jax.ShapeDtypeStruct((1, config.block_size), jnp.int32)
  return jax.eval_shape(lambda t: model.init(jax.random.key(0), t), tokens)["params"]


def count_pytree_params(config: ModelConfig) -> int:
  """The number of scalars in the initialised parameter pytree (computed without allocating it)."""
  leaves = jax.tree_util.tree_leaves(nn.meta.unbox(abstract_params(config)))
  return sum(math.prod(leaf.shape) for leaf in leaves)


def flops_per_token(config: ModelConfig) -> int:
  """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12 L T C.

  N is nanoGPT's non-embedding count (the tied head's matmul is in it via wte, an untied one's via
  lm_head); 6N covers the matmuls with weights (2 forward + 4 backward per weight: SwiGLU's three
  matrices, GQA's narrower keys and values as they are), 12·L·T·C the attention score and value
  matmuls (QK^T and AV, forward and backward, over all H query heads, grouped or not) at full
  context T = block_size. Norms, RoPE and the soft-cap are elementwise: not counted.
  """
  n = count_params(config).non_embedding
  return 6 * n + 12 * config.n_layer * config.block_size * config.n_embd


def training_memory_bytes(config: ModelConfig) -> int:
  """Bytes of float32 state a training step keeps: params, gradients and AdamW's two moments.

  Activations come on top and depend on batch, dtype and remat; `tools/bench.py` reports the
  compiled step's real peak.
  """
  return 4 * 4 * count_params(config).total


def is_scanned(params) -> bool:
  """Whether a parameter dict has the scanned layout (one stacked `h`, not `h_0`, `h_1`, ...)."""
  return "h" in params


def to_layout(tree, scan_layers: bool):
  """`tree` with every parameter dict in it (a dict holding `wte`: the parameters, AdamW's mu and
  nu) in the scanned (`scan_layers`) or the unrolled layout; a dict already so is left as it is.
  Stacking makes jax arrays; unstacking slices what it is given (numpy stays numpy). A dict whose
  blocks hold no arrays (an optimizer's masked state: Muon's AdamW part masks every block) takes
  its number of layers from another dict of the tree."""
  is_params = lambda node: isinstance(node, dict) and "wte" in node
  stacks = [
      jax.tree.leaves(n["h"])
      for n in jax.tree.leaves(tree, is_leaf=is_params)
      if is_params(n) and "h" in n
  ]
  depth = next((leaves[0].shape[0] for leaves in stacks if leaves), 0)

  def convert(node):
    if not (isinstance(node, dict) and "wte" in node) or is_scanned(node) == scan_layers:
      return node
    if scan_layers:
      blocks = sorted((k for k in node if k.startswith("h_")), key=lambda k: int(k[2:]))
      rest = {k: v for k, v in node.items() if not k.startswith("h_")}
      stacked = jax.tree.map(lambda *xs: _stack(xs), *[node[k] for k in blocks])
      return {**rest, "h": stacked}
    n_layer = (jax.tree.leaves(node["h"]) or [np.zeros(depth)])[0].shape[0]
    rest = {k: v for k, v in node.items() if k != "h"}
    return {
        **rest,
        **{
            f"h_{i}": jax.tree.map(lambda x, i=i: x[i], node["h"]) for i in range(n_layer)
        }
    }

  return jax.tree.map(convert, tree, is_leaf=is_params)


def _stack(arrays):
  return np.stack(arrays) if all(isinstance(a, np.ndarray) for a in arrays) else jnp.stack(arrays)
