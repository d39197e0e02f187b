"""Fused attention: Pallas' splash and flash kernels (interpret mode on the CPU) equal XLA's einsum
attention, in the kernel, in the model with remat and scanned layers, and over 20 training steps;
"auto" is decided by the devices the step is compiled for."""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax import attention, step
from gptjax.config import ModelConfig, validate
from gptjax.errors import ConfigError
from gptjax.model import GPT
from gptjax.params import to_layout
from gptjax.training.loop import train

from conftest import read_metrics

B, T, H, D = 2, 128, 2, 64  # splash and flash tile the sequence in blocks of 128 tokens


def reference_attention(q, k, v):
  """gptjax's einsum attention (model.CausalSelfAttention._attend), written out: float32 scores,
  causal mask, softmax, the weights cast back to q's dtype."""
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(q.shape[-1])
  causal = jnp.tril(jnp.ones((q.shape[1], q.shape[1]), bool))
  weights = jax.nn.softmax(jnp.where(causal, scores, jnp.finfo(jnp.float32).min), axis=-1)
  return jnp.einsum("bhqk,bkhd->bqhd", weights.astype(q.dtype), v)


def output_and_grads(fn, q, k, v, dy):
  y, pullback = jax.vjp(fn, q, k, v)
  return (y, *pullback(dy.astype(y.dtype)))


@pytest.mark.parametrize("kernel", ["splash", "flash"])
def test_fused_kernel_equals_einsum_attention_forward_and_backward(kernel):
  """Output and dq, dk, dv on random inputs: within float32 rounding in float32; in bfloat16 as
  close to the float32 reference as the bfloat16 einsum is (the tolerance bfloat16 allows)."""
  config = ModelConfig(vocab_size=8,
                       block_size=T,
                       n_layer=1,
                       n_head=H,
                       n_embd=H * D,
                       attention=kernel).for_platform("cpu")
  assert config.pallas_interpret
  q, k, v, dy = (
      jax.random.normal(key, (B, T, H, D)) for key in jax.random.split(jax.random.key(0), 4))
  exact = output_and_grads(reference_attention, q, k, v, dy)
  fused = jax.jit(
      functools.partial(output_and_grads, functools.partial(attention.fused_attention,
                                                            config=config)))
  einsum = jax.jit(functools.partial(output_and_grads, reference_attention))
  for dtype, atol in ((jnp.float32, 1e-5), (jnp.bfloat16, None)):
    inputs = [x.astype(dtype) for x in (q, k, v)]
    ours, theirs = fused(*inputs, dy), einsum(*inputs, dy)
    for name, a, b, e in zip(("y", "dq", "dk", "dv"), ours, theirs, exact):
      assert a.dtype == dtype, name
      error = float(jnp.max(jnp.abs(a.astype(jnp.float32) - e)))
      bound = atol or max(2 * float(jnp.max(jnp.abs(b.astype(jnp.float32) - e))), 2e-2)
      assert error <= bound, (kernel, jnp.dtype(dtype).name, name, error, bound)


def test_splash_in_the_model_with_remat_and_scanned_layers_equals_xla():
  """The whole model's loss and gradients (float32): splash under nn.scan and the remat policy
  that keeps splash's named output against the unrolled einsum model without remat."""
  config = ModelConfig(vocab_size=64, block_size=T, n_layer=2, n_head=H, n_embd=H * 16)
  model = GPT(config)
  windows = jax.random.randint(jax.random.key(1), (2, T + 1), 0, config.vocab_size)
  params = jax.jit(model.init)(jax.random.key(2), windows[:, :-1])["params"]
  params = jax.tree.map(lambda p: p.unbox() if hasattr(p, "unbox") else p,
                        params,
                        is_leaf=lambda p: hasattr(p, "unbox"))
  grads = jax.jit(jax.value_and_grad(step.loss_fn), static_argnums=1)
  plain = grads(params, model, windows)
  fused = dataclasses.replace(config,
                              attention="splash",
                              remat="dots_no_batch+attn_out",
                              scan_layers=True).for_platform("cpu")
  loss, stacked = grads(to_layout(params, scan_layers=True), GPT(fused), windows)
  np.testing.assert_allclose(loss, plain[0], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), plain[1],
               to_layout(stacked, scan_layers=False))


def test_twenty_training_steps_with_splash_give_the_xla_losses(tiny):
  """A small model trained 20 steps in float32, splash (interpret mode) against XLA's einsum:
  the same losses within 1e-3 (measured: ~1e-6)."""
  losses = {}
  for kernel in ("xla", "splash"):
    config = tiny(model_name=kernel,
                  attention=kernel,
                  block_size=T,
                  batch_size=2,
                  max_iters=20,
                  eval_interval=20,
                  eval_iters=1)
    train(config)
    losses[kernel] = [r["train_loss"] for r in read_metrics(os.path.join(config.out_dir, kernel))]
  assert len(losses["splash"]) == 20
  np.testing.assert_allclose(losses["splash"], losses["xla"], rtol=0, atol=1e-3)
  assert losses["xla"][-1] < losses["xla"][0] - 1.0  # it learned: the comparison means something


@pytest.mark.parametrize("platform, dtype, block_size, expected", [
    ("gpu", "bfloat16", 1024, "cudnn"),
    ("gpu", "float16", 64, "cudnn"),
    ("gpu", "float32", 1024, "xla"),
    ("tpu", "bfloat16", 1024, "splash"),
    ("tpu", "float32", 256, "splash"),
    ("tpu", "bfloat16", 64, "xla"),
    ("cpu", "bfloat16", 1024, "xla"),
])
def test_auto_attention_is_decided_by_the_platform_compiled_for(platform, dtype, block_size,
                                                                expected):
  config = ModelConfig(vocab_size=8,
                       block_size=block_size,
                       n_layer=1,
                       n_head=1,
                       n_embd=8,
                       dtype=dtype,
                       dropout=0.1).for_platform(platform)
  assert config.attention == expected and not config.pallas_interpret


def test_a_kernel_the_platform_cannot_run_is_a_config_error():
  config = ModelConfig(vocab_size=8, block_size=128, n_layer=1, n_head=1, n_embd=8)
  with pytest.raises(ConfigError, match="'cudnn' runs on NVIDIA GPUs.*compiled for cpu"):
    dataclasses.replace(config, attention="cudnn").for_platform("cpu")
  with pytest.raises(ConfigError, match="'splash' runs on TPUs.*compiled for gpu"):
    dataclasses.replace(config, attention="splash").for_platform("gpu")
  assert dataclasses.replace(config,
                             attention="flash").for_platform("tpu").pallas_interpret is False


@pytest.mark.parametrize("overrides, fragments", [
    (dict(attention="splash",
          block_size=100), ["block_size=100", "multiple of 128", "--config.block_size=128"]),
    (dict(attention="cudnn"), ["cudnn", "float32", "--config.dtype=bfloat16"]),
    (dict(attention="fused"), ["attention", "'fused'", "splash, flash"]),
])
def test_attention_settings_are_validated_with_the_fix(tiny, overrides, fragments):
  with pytest.raises(ConfigError) as error:
    validate(tiny(**overrides))
  for fragment in fragments:
    assert fragment in str(error.value), (fragment, str(error.value))
