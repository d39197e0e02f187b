"""Fused causal attention: cuDNN's kernel on NVIDIA GPUs, Pallas' splash and flash kernels on TPUs.

  y = fused_attention(q, k, v, config)   # q, k, v, y: (B, T, H, D); config.attention names the kernel

None of them materialises the (B, H, T, T) scores, and none drops attention weights (dropout
applies to the embeddings and residual branches only, gptjax/model.py). The Pallas kernels want
(B, H, T, D), head dim minor: splash takes one sequence (H, T, D) and is vmapped over the batch,
scales nothing (q comes scaled) and tiles the sequence in PALLAS_BLOCK-token blocks; jax's flash
kernel takes the batch and a scale. Splash names its output and residuals ATTN_OUT, the name the
remat policies that keep the attention output save (gptjax/model.py).

Off a TPU (tests on the CPU) both run in Pallas' interpret mode: splash is built with
interpret=True; flash has no such argument, so its forward and backward are traced under
`force_tpu_interpret_mode`, through a custom_vjp whose backward re-enters it (the mode must hold
where each pallas_call is traced).

Under a mesh of more than one device a pallas_call is opaque to XLA's partitioner (it would gather
q, k and v onto every device), so the kernels run under jax.shard_map: the batch split over data x
fsdp, the heads over tensor, as the logical-axis rules split them (gptjax/sharding.py). Splash's
kernel is built for all heads with head_shards = tensor and handed to shard_map with its own
manual_sharding_spec (MaxText's way).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from gptjax import sharding
from gptjax.model_config import PALLAS_BLOCK, ModelConfig

ATTN_OUT = "attn_out"  # jax.ad_checkpoint name of the attention output (and splash's residuals)


def fused_attention(q, k, v, config: ModelConfig):
  """Causal attention of (B, T, H, D) q, k, v through the kernel `config.attention` names."""
  if config.attention == "cudnn":
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or math.prod(mesh.shape.values()) == 1 or mesh.are_all_axes_manual:
    return _pallas(q, k, v, config, _kernel(config, q.shape[2], q.shape[1], 1))
  return _sharded(q, k, v, config, mesh)


def prepare(config: ModelConfig, mesh: jax.sharding.Mesh) -> None:
  """Builds the splash kernels the step will trace for `mesh`, here, outside jit and any mesh
  context (step.build calls it). Building one makes its mask arrays eagerly, which inside the trace
  under a mesh of compile-only devices (the planner's TPU targets) cannot run; built here they are
  cached (splash_kernel) and the trace finds them."""
  if config.attention != "splash":
    return
  with jax.set_mesh(None):  # the arrays go to this process's default device
    for head_shards in {1, mesh.shape[sharding.HEAD_AXIS]}:
      splash_kernel(config.n_head, config.block_size, head_shards, config.pallas_interpret)


def _kernel(config: ModelConfig, num_heads: int, seq_len: int, head_shards: int):
  """Splash's kernel for these heads (None for flash, which needs none built)."""
  if config.attention != "splash":
    return None
  return splash_kernel(num_heads, seq_len, head_shards, config.pallas_interpret)


def _pallas(q, k, v, config: ModelConfig, kernel):
  qh, kh, vh = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))  # (B, H, T, D)
  if config.attention == "splash":
    scale = jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)
    out = jax.vmap(kernel)(qh * scale, kh, vh)
  elif config.pallas_interpret:
    out = _interpreted_flash(qh, kh, vh)
  else:
    out = flash_attention(qh, kh, vh)
  return jnp.swapaxes(out, 1, 2)


def _sharded(q, k, v, config: ModelConfig, mesh):
  """The kernel under shard_map: batch over data x fsdp, heads over tensor."""
  heads = mesh.shape[sharding.HEAD_AXIS]
  kernel = _kernel(config, q.shape[2], q.shape[1], heads)
  spec = P(sharding.BATCH_AXES, None, sharding.HEAD_AXIS, None)
  kernel_spec = None if kernel is None else kernel.manual_sharding_spec(
      NamedSharding(mesh, P(sharding.HEAD_AXIS, None)))

  def local(kernel, q, k, v):
    return _pallas(q, k, v, config, kernel)

  return jax.shard_map(local,
                       mesh=mesh,
                       in_specs=(kernel_spec, spec, spec, spec),
                       out_specs=spec,
                       check_vma=False)(kernel, q, k, v)


@functools.lru_cache(maxsize=None)
def splash_kernel(num_heads: int, seq_len: int, head_shards: int = 1, interpret: bool = False):
  """A causal splash kernel for one sequence's (num_heads, seq_len, D) q, k, v, in blocks of
  PALLAS_BLOCK tokens (separate dq and dkv backward kernels), its residuals named ATTN_OUT.
  Building it processes the mask in numpy (milliseconds at T=1024), hence the cache."""
  from jax.experimental.pallas.ops.tpu import splash_attention as splash
  block = min(PALLAS_BLOCK, seq_len)
  mask = splash.MultiHeadMask([splash.CausalMask((seq_len, seq_len))] * num_heads)
  sizes = splash.BlockSizes(block_q=block,
                            block_kv=block,
                            block_kv_compute=block,
                            block_q_dkv=block,
                            block_kv_dkv=block,
                            block_kv_dkv_compute=block,
                            block_q_dq=block,
                            block_kv_dq=block)
  with jax.ensure_compile_time_eval():  # its mask arrays are made with jnp: keep them concrete
    return splash.make_splash_mha(mask,
                                  block_sizes=sizes,
                                  head_shards=head_shards,
                                  q_seq_shards=1,
                                  interpret=interpret,
                                  residual_checkpoint_name=ATTN_OUT)


def flash_attention(q, k, v):
  """jax's Pallas TPU flash attention of (B, H, T, D) q, k, v, causal, in PALLAS_BLOCK blocks."""
  from jax.experimental.pallas.ops.tpu import flash_attention as flash
  b = min(PALLAS_BLOCK, q.shape[2])
  sizes = flash.BlockSizes(block_q=b,
                           block_k_major=b,
                           block_k=b,
                           block_b=1,
                           block_q_major_dkv=b,
                           block_k_major_dkv=b,
                           block_k_dkv=b,
                           block_q_dkv=b,
                           block_k_major_dq=b,
                           block_k_dq=b,
                           block_q_dq=b)
  return flash.flash_attention(q,
                               k,
                               v,
                               causal=True,
                               sm_scale=1.0 / math.sqrt(q.shape[-1]),
                               block_sizes=sizes)


@jax.custom_vjp
def _interpreted_flash(q, k, v):
  return _interpreted_flash_fwd(q, k, v)[0]


def _interpreted_flash_fwd(q, k, v):
  from jax.experimental.pallas import tpu as pltpu
  with pltpu.force_tpu_interpret_mode():
    return jax.vjp(flash_attention, q, k, v)  # (out, pullback: a pytree of the residuals)


def _interpreted_flash_bwd(pullback, grad):
  from jax.experimental.pallas import tpu as pltpu
  with pltpu.force_tpu_interpret_mode():
    return pullback(grad)


_interpreted_flash.defvjp(_interpreted_flash_fwd, _interpreted_flash_bwd)
