"""Parameter accounting: the analytic count against the real pytree, a brute-force init and nanoGPT."""

from __future__ import annotations

import dataclasses
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from conftest import CONFIGS_DIR, preset_files

from gptjax import config as config_lib
from gptjax import describe
from gptjax import params as params_lib
from gptjax import presets, units
from gptjax.model import GPT

PRESET_FILES = preset_files()


def preset_model_config(file_name, **changes):
  config = presets.load(os.path.join(CONFIGS_DIR, file_name))
  config_lib.validate(config)
  return dataclasses.replace(config_lib.ModelConfig.from_config(config), **changes)


def nanogpt_param_shapes(V, T, L, C, bias):
  """Shapes of nanoGPT's `GPT.named_parameters()` (model.py), written from its module definitions.

  PyTorch's Linear(in, out) weight is (out, in); lm_head.weight is wte.weight (weight tying), so
  named_parameters() yields it once, as transformer.wte.weight.
  """

  def linear(name, n_in, n_out):
    return [(f"{name}.weight", (n_out, n_in))] + ([(f"{name}.bias", (n_out,))] if bias else [])

  def layer_norm(name):  # nanoGPT's LayerNorm: weight always, bias only when bias=True.
    return [(f"{name}.weight", (C,))] + ([(f"{name}.bias", (C,))] if bias else [])

  shapes = [("transformer.wte.weight", (V, C)), ("transformer.wpe.weight", (T, C))]
  for i in range(L):
    h = f"transformer.h.{i}"
    shapes += layer_norm(f"{h}.ln_1")
    shapes += linear(f"{h}.attn.c_attn", C, 3 * C)
    shapes += linear(f"{h}.attn.c_proj", C, C)
    shapes += layer_norm(f"{h}.ln_2")
    shapes += linear(f"{h}.mlp.c_fc", C, 4 * C)
    shapes += linear(f"{h}.mlp.c_proj", 4 * C, C)
  shapes += layer_norm("transformer.ln_f")
  return shapes


def nanogpt_count(V, T, L, C, bias):
  return sum(math.prod(shape) for _, shape in nanogpt_param_shapes(V, T, L, C, bias))


def test_gpt2_small_matches_the_published_count():
  # Hugging Face's gpt2 (124M): 124,439,808 parameters; nanoGPT prints 123.65M, i.e. without wpe.
  assert nanogpt_count(V=50257, T=1024, L=12, C=768, bias=True) == 124_439_808
  gpt2 = config_lib.ModelConfig(vocab_size=50257,
                                block_size=1024,
                                n_layer=12,
                                n_head=12,
                                n_embd=768,
                                bias=True)
  breakdown = params_lib.count_params(gpt2)
  assert breakdown.total == 124_439_808
  assert breakdown.non_embedding == 124_439_808 - 1024 * 768
  assert params_lib.count_pytree_params(gpt2) == 124_439_808


@pytest.mark.parametrize("bias, scan_layers", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("file_name", PRESET_FILES)
def test_analytic_count_matches_pytree_and_nanogpt(file_name, bias, scan_layers):
  mc = preset_model_config(file_name, bias=bias, scan_layers=scan_layers)
  breakdown = params_lib.count_params(mc)
  assert breakdown.total == params_lib.count_pytree_params(mc)
  assert breakdown.total == nanogpt_count(mc.vocab_size, mc.block_size, mc.n_layer, mc.n_embd, bias)
  assert sum(count for _, count in describe.breakdown_rows(breakdown)) == breakdown.total


@pytest.mark.parametrize("bias", [False, True])
def test_brute_force_init_of_a_tiny_model(bias):
  mc = config_lib.ModelConfig(vocab_size=37, block_size=7, n_layer=2, n_head=2, n_embd=8, bias=bias)
  # Real arrays, not shapes. XLA's CPU backend needs seconds to optimise the RNG kernels of even a
  # tiny init; unoptimised code builds the same arrays in a fraction of that.
  init = jax.jit(GPT(mc).init, compiler_options={"xla_backend_optimization_level": 0})
  variables = init(jax.random.key(0), jnp.zeros((1, mc.block_size), jnp.int32))
  leaves = jax.tree_util.tree_leaves(nn.meta.unbox(variables["params"]))
  assert all(isinstance(leaf, jax.Array) for leaf in leaves)
  actual = sum(leaf.size for leaf in leaves)
  assert actual == params_lib.count_params(mc).total
  assert actual == params_lib.count_pytree_params(mc)
  assert actual == nanogpt_count(37, 7, 2, 8, bias)
  # Per-name check against nanoGPT's parameters (same scalars per GPT-2 name, after reshapes).
  flat = {
      "/".join(str(getattr(k, "key", k)) for k in path): leaf.size for path, leaf in
      jax.tree_util.tree_leaves_with_path(nn.meta.unbox(variables["params"]))
  }
  assert flat["wte"] == 37 * 8 and flat["wpe"] == 7 * 8
  assert flat["h_0/attn/c_attn/kernel"] == 8 * 3 * 8
  assert flat["h_1/mlp/c_proj/kernel"] == 4 * 8 * 8
  assert ("h_0/ln_1/bias" in flat) == bias and ("h_0/mlp/c_fc/bias" in flat) == bias
  assert len(flat) == len(nanogpt_param_shapes(37, 7, 2, 8, bias))


@pytest.mark.parametrize("file_name", PRESET_FILES)
def test_breakdown_components(file_name):
  mc = preset_model_config(file_name)
  C, L, V, T = mc.n_embd, mc.n_layer, mc.vocab_size, mc.block_size
  b = int(mc.bias)  # biases: 3C + C (attention), 4C + C (MLP), 2C (two norms); C more in ln_f
  breakdown = params_lib.count_params(mc)
  assert breakdown.token_embedding == V * C
  assert breakdown.position_embedding == T * C
  assert breakdown.per_layer == 12 * C * C + 2 * C + b * 11 * C
  assert breakdown.total == V * C + T * C + L * (12 * C * C + 2 * C + b * 11 * C) + C + b * C
  assert breakdown.non_embedding == breakdown.total - T * C


@pytest.mark.parametrize("file_name", PRESET_FILES)
def test_flops_per_token(file_name):
  mc = preset_model_config(file_name)
  non_embedding = params_lib.count_params(mc).non_embedding
  expected = 6 * non_embedding + 12 * mc.n_layer * mc.block_size * mc.n_embd
  assert params_lib.flops_per_token(mc) == expected


def test_training_memory_is_16_bytes_a_parameter():
  mc = preset_model_config("150M.py")
  assert params_lib.training_memory_bytes(mc) == 16 * 152_101_632


@pytest.mark.parametrize("n, text", [(152_101_632, "152.10M"), (1_844_928, "1.84M"),
                                     (1_500, "1.50K"), (999, "999"), (2_000_000_000, "2.00B")])
def test_format_count(n, text):
  assert units.format_count(n) == text
