"""The architecture options (RoPE, RMSNorm, SwiGLU / ReLU², qk_norm, an untied head, grouped-query
attention, the logit soft-cap): exact counts for drawn combinations, RoPE against a complex-number
rotation, KV-cache decoding against the full forward, the chunked loss, Muon's assignment, fused
kernels, checkpoint and GPT-2 export refusals."""

from __future__ import annotations

import dataclasses
import math
import random

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax import optim, step
from gptjax import params as params_lib
from gptjax.config import ModelConfig
from gptjax.errors import CheckpointError, UserError
from gptjax.generate import generate, init_cache
from gptjax.layers import rope
from gptjax.model import GPT

from conftest import perturbed_params

MODERN = dict(positions="rope",
              norm="rmsnorm",
              mlp="swiglu",
              qk_norm=True,
              tie_embeddings=False,
              n_kv_head=2,
              logit_softcap=15.0)
BASE = ModelConfig(vocab_size=97, block_size=16, n_layer=2, n_head=4, n_embd=32)


def drawn_configs(count: int, seed: int = 23):
  """`count` option combinations drawn at random (seeded), each valid."""
  rng = random.Random(seed)
  for _ in range(count):
    n_head = rng.choice([2, 4, 6])
    yield ModelConfig(vocab_size=rng.choice([61, 256]),
                      block_size=rng.choice([8, 16]),
                      n_layer=rng.choice([1, 2, 3]),
                      n_head=n_head,
                      n_embd=n_head * rng.choice([4, 8]),
                      bias=rng.random() < 0.5,
                      scan_layers=rng.random() < 0.5,
                      positions=rng.choice(["learned", "rope"]),
                      norm=rng.choice(["layernorm", "rmsnorm"]),
                      mlp=rng.choice(["gelu", "swiglu", "relu2"]),
                      mlp_hidden=rng.choice([0, 0, 40]),
                      qk_norm=rng.random() < 0.5,
                      tie_embeddings=rng.random() < 0.5,
                      n_kv_head=rng.choice([0] +
                                           [d for d in range(1, n_head + 1) if n_head % d == 0]),
                      logit_softcap=rng.choice([0.0, 30.0]))


@pytest.mark.parametrize(
    "config",
    list(drawn_configs(24)),
    ids=lambda c: "-".join(
        str(getattr(c, f)) for f in ("positions", "norm", "mlp", "n_kv_head", "scan_layers")))
def test_analytic_count_and_flops_equal_the_pytrees(config):
  """count_params == the initialised pytree (both layouts), and 6N of flops_per_token is 6 x the
  pytree's matmul weights: every leaf but wpe and, with an untied head, wte (a lookup)."""
  boxed = params_lib.abstract_params(config)
  leaves = jax.tree_util.tree_leaves_with_path(nn.meta.unbox(boxed))
  sizes = {jax.tree_util.keystr(path): math.prod(leaf.shape) for path, leaf in leaves}
  assert params_lib.count_params(config).total == sum(sizes.values())
  assert params_lib.count_pytree_params(
      dataclasses.replace(config, scan_layers=not config.scan_layers)) == sum(sizes.values())
  lookups = sizes.get("['wpe']", 0) + (0 if config.tie_embeddings else sizes["['wte']"])
  attention = 12 * config.n_layer * config.block_size * config.n_embd
  assert params_lib.flops_per_token(config) == 6 * (sum(sizes.values()) - lookups) + attention
  assert ("['wpe']" in sizes) == (config.positions == "learned")
  assert any("lm_head" in k for k in sizes) != config.tie_embeddings
  # every parameter carries a logical name per dimension (what sharding.py maps onto the mesh)
  for leaf in jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)):
    assert isinstance(leaf, nn.Partitioned) and len(leaf.names) == len(leaf.value.shape)


def test_swiglu_width_rule():
  """SwiGLU's default hidden width: 8C/3 rounded up to a multiple of 64 (about the parameters of
  a 4x GELU MLP); mlp_hidden overrides every rule."""
  for C, width in ((384, 1024), (768, 2048), (32, 128), (1000, 2688)):
    config = dataclasses.replace(BASE, n_embd=C, mlp="swiglu")
    assert config.mlp_width == width == -(-(8 * C // 3) // 64) * 64
  assert dataclasses.replace(BASE, mlp="relu2").mlp_width == 4 * BASE.n_embd
  assert dataclasses.replace(BASE, mlp="swiglu", mlp_hidden=72).mlp_width == 72


def test_rope_turns_each_half_split_pair_by_its_angle():
  """rope against complex numbers: the pair (x_i, x_{i+D/2}) as x_i + i x_{i+D/2}, times
  exp(i position base^(-2i/D)) (Llama's and Hugging Face's rotate_half convention)."""
  B, T, H, D, base = 2, 7, 3, 8, 500.0
  x = np.random.default_rng(0).normal(size=(B, T, H, D)).astype(np.float32)
  positions = np.arange(T) + 5
  z = x[..., :D // 2] + 1j * x[..., D // 2:]
  angles = positions[:, None] * base**(-2 * np.arange(D // 2) / D)  # (T, D/2)
  turned = z * np.exp(1j * angles)[None, :, None, :]
  expected = np.concatenate([turned.real, turned.imag], axis=-1)
  np.testing.assert_allclose(rope(jnp.asarray(x), jnp.asarray(positions), base),
                             expected,
                             atol=1e-5)


CACHED = {
    "rope": dict(positions="rope"),
    "gqa": dict(n_kv_head=2),
    "mqa+qk_norm": dict(n_kv_head=1, qk_norm=True),
    "modern": MODERN,
    "modern+relu2+bias": dict(MODERN, mlp="relu2", bias=True, n_kv_head=4),
}


@pytest.mark.parametrize("name", CACHED)
def test_kv_cache_logits_equal_the_full_forward(name):
  """Prefill 5 tokens, then one at a time through the cache (RoPE turns each key at its absolute
  position; GQA caches H_kv heads): every position's logits equal the full forward's."""
  config = dataclasses.replace(BASE, **CACHED[name])
  model, params = GPT(config), perturbed_params(config)
  tokens = jax.random.randint(jax.random.key(2), (3, 16), 0, config.vocab_size)
  full = model.apply({"params": params}, tokens)
  cache = init_cache(model, 3)
  kv_heads = {leaf.shape[2] for leaf in jax.tree.leaves(cache) if leaf.ndim == 4}
  assert kv_heads == {config.kv_heads}
  pieces = []
  for start, stop in [(0, 5)] + [(t, t + 1) for t in range(5, 16)]:
    logits, variables = model.apply({
        "params": params,
        "cache": cache
    },
                                    tokens[:, start:stop],
                                    decode=True,
                                    mutable=["cache"])
    cache = variables["cache"]
    pieces.append(logits)
  np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, atol=2e-5, rtol=1e-5)


def test_greedy_generation_of_a_modern_model_equals_the_full_forward_argmax():
  """gptjax.generate (prefill, then the compiled decode loop, past a full cache) at temperature 0
  against the full forward over the context the cache holds, no cache: the prompt, then whenever
  block_size tokens are held the last block_size // 2 (the sampler's sliding window). RoPE
  positions restart with the window, as the cache's do."""
  config = dataclasses.replace(BASE, **MODERN)
  model, params = GPT(config), perturbed_params(config, seed=3)
  block = config.block_size

  @jax.jit
  def next_token(context, length):  # context padded to block_size: one compile (causal: exact)
    return jnp.argmax(model.apply({"params": params}, context[None])[0, length - 1])

  prompt = [5, 17, 3]
  drawn = generate(model, params, prompt, max_new_tokens=30, temperature=0.0)[0].tolist()
  sequence, context = list(prompt), list(prompt)
  for _ in range(30):
    token = int(next_token(jnp.asarray(context + [0] * (block - len(context))), len(context)))
    sequence.append(token)
    context = sequence[-(block // 2):] if len(context) == block else context + [token]
  assert drawn == sequence


def test_soft_cap_bounds_the_logits_and_is_cap_tanh_of_the_uncapped():
  config = dataclasses.replace(BASE, **MODERN)
  params = perturbed_params(config)
  tokens = jax.random.randint(jax.random.key(4), (2, 16), 0, config.vocab_size)
  capped = GPT(config).apply({"params": params}, tokens)
  plain = GPT(dataclasses.replace(config, logit_softcap=0.0)).apply({"params": params}, tokens)
  np.testing.assert_allclose(capped, 15.0 * np.tanh(np.asarray(plain) / 15.0), atol=1e-5)
  assert np.max(np.abs(capped)) < 15.0


@pytest.mark.parametrize("softcap", [0.0, 2.0])
def test_chunked_loss_through_an_untied_soft_capped_head_equals_the_plain_loss(softcap):
  """loss_chunk_tokens with lm_head and the soft-cap (its custom backward through the tanh): the
  loss and every gradient of the plain loss over the whole logits, with and without z-loss."""
  config = dataclasses.replace(BASE, **dict(MODERN, logit_softcap=softcap))
  params = perturbed_params(config)
  windows = jax.random.randint(jax.random.key(8), (2, 17), 0, config.vocab_size)

  def grad(config, z_loss):
    objective = lambda p: step.objective(p, GPT(config), windows, z_loss=z_loss)[0]
    return jax.jit(jax.value_and_grad(objective))(params)

  for z_loss in (0.0, 1e-2):
    plain = grad(config, z_loss)
    chunked = grad(dataclasses.replace(config, loss_chunk_tokens=12), z_loss)
    np.testing.assert_allclose(chunked[0], plain[0], rtol=0, atol=2e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=2e-6), chunked[1],
                 plain[1])


@pytest.mark.parametrize("scan_layers", [False, True])
def test_muon_takes_the_new_kernels_with_their_matrices_and_adamw_the_rest(scan_layers):
  """c_q (C, H, D) and c_kv (C, 2, H_kv, D) map C to the heads (k and v apart), SwiGLU's c_fc
  (C, 2, F) C to F (gate and up apart); lm_head, the norms' scales go to AdamW; a stacked layers
  axis is one more batch axis. One Muon step runs."""
  config = dataclasses.replace(BASE, scan_layers=scan_layers, **MODERN)
  boxed = params_lib.abstract_params(config)
  dims = optim.muon_assignment(nn.get_partition_spec(boxed))
  shift = int(scan_layers)
  block = "['h']" if scan_layers else "['h_0']"
  as_tuple = lambda a: (a,) if isinstance(a, int) else tuple(a)
  expected = {
      "['attn']['c_q']['kernel']": ((0,), (1, 2)),
      "['attn']['c_kv']['kernel']": ((0,), (2, 3)),
      "['attn']['c_proj']['kernel']": ((0, 1), (2,)),
      "['mlp']['c_fc']['kernel']": ((0,), (2,)),
      "['mlp']['c_proj']['kernel']": ((0,), (1,)),
  }
  for name, (reduction, output) in expected.items():
    dim = dims[block + name]
    assert as_tuple(dim.reduction_axis) == tuple(a + shift for a in reduction), name
    assert as_tuple(dim.output_axis) == tuple(a + shift for a in output), name
  adamw = {k for k, d in dims.items() if d is None}
  assert adamw == {k for k in dims if k.endswith("['scale']")
                  } | {"['lm_head']['kernel']", "['wte']"}
  assert any("q_norm" in k for k in adamw) and any("k_norm" in k for k in adamw)
  from gptjax.config import get_base_config
  optimizer_config = get_base_config()
  optimizer_config.optimizer = "muon"
  tx = optim.make_optimizer(optimizer_config, nn.get_partition_spec(boxed))
  params = perturbed_params(config)
  grads = jax.jit(
      jax.grad(lambda p: step.loss_fn(p, GPT(config), jnp.ones((2, 17), jnp.int32))))(params)
  updates = jax.jit(lambda g, p: tx.update(g, tx.init(p), p)[0])(grads, params)
  assert all(np.all(np.isfinite(u)) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("kernel", ["splash", "flash"])
def test_fused_kernels_with_grouped_heads_and_rope_equal_the_einsum(kernel):
  """The Pallas kernels (interpret mode on the CPU) see the key/value heads repeated for their
  groups: loss and gradients equal XLA's einsum attention."""
  config = dataclasses.replace(BASE, block_size=128, n_layer=1, **MODERN)
  params = perturbed_params(config)
  windows = jax.random.randint(jax.random.key(9), (2, 129), 0, config.vocab_size)
  grad = lambda c: jax.jit(jax.value_and_grad(step.loss_fn), static_argnums=1)(params, GPT(c),
                                                                               windows)
  reference = grad(dataclasses.replace(config, attention="xla"))
  fused = grad(dataclasses.replace(config, attention=kernel, pallas_interpret=True))
  np.testing.assert_allclose(fused[0], reference[0], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), fused[1],
               reference[1])


def test_a_checkpoint_with_another_option_is_refused_naming_it(tmp_path):
  """check_resume: an option that differs is named with both values; a checkpoint saved before
  the options existed (no such keys) has their defaults and resumes."""
  from conftest import tiny_config
  from gptjax.training.run import check_resume
  config = tiny_config(tmp_path)
  saved = ModelConfig.from_config(config).architecture()
  old = {k: v for k, v in saved.items() if k not in ("positions", "mlp", "tie_embeddings")}
  check_resume(config, (4, dict(architecture=old, config=config.to_dict())))
  config.positions = "rope"
  with pytest.raises(CheckpointError,
                     match="positions: checkpoint has 'learned', config has "
                     "'rope'"):
    check_resume(config, (4, dict(architecture=old, config=config.to_dict())))


def test_gpt2_export_refuses_options_gpt2_cannot_hold(tmp_path):
  from gptjax import hf_gpt2
  config = dataclasses.replace(BASE, **MODERN)
  target = tmp_path / "hf"
  with pytest.raises(UserError) as error:
    hf_gpt2.save_hf_gpt2(GPT(config), perturbed_params(config), str(target))
  message = str(error.value)
  assert "\n" not in message and "positions='rope'" in message and "n_kv_head=2" in message
  assert not target.exists()
  assert ModelConfig(97, 16, 2, 4, 32, n_kv_head=4, mlp_hidden=128).non_gpt2_options() == []


def test_a_modern_run_trains_scanned_with_remat_resumes_unrolled_and_refuses_another_option(tiny):
  """A modern model's run: 3 steps scanned with full remat, resumed unrolled to 6, gives the
  losses of 6 straight unrolled steps; load_run and the sampler read it; resuming it with another
  option is one error naming the option and both values."""
  from conftest import read_metrics
  from gptjax import checkpoint
  from gptjax.training.loop import train
  settings = dict(MODERN, n_head=4, max_iters=6, lr_decay_iters=6, eval_interval=3)
  straight = tiny(model_name="straight", **settings)
  train(straight)
  run = tiny(model_name="resumed", scan_layers=True, remat="full", **dict(settings, max_iters=3))
  train(run)
  run.scan_layers, run.remat, run.max_iters = False, "none", 6
  train(run)
  losses = lambda c: [r.get("train_loss", 0.0) for r in read_metrics(f"{c.out_dir}/{c.model_name}")]
  np.testing.assert_allclose(losses(run), losses(straight), rtol=0, atol=1e-5)
  model, params, _, step_done, _ = checkpoint.load_run(f"{run.out_dir}/{run.model_name}")
  assert step_done == 6 and model.config.positions == "rope" and "lm_head" in params
  assert len(generate(model, params, [10, 20], 5, temperature=0.0)[0]) == 7
  run.mlp, run.max_iters = "relu2", 8
  with pytest.raises(CheckpointError, match="mlp: checkpoint has 'swiglu', config has 'relu2'"):
    train(run)


def test_the_planner_counts_the_options():
  """The memory model: GPT-2's 12C activations and 12C^2 block weights, SwiGLU's three F-wide
  matrices, GQA's narrower k, v and KV cache; the state's bytes are the exact count's."""
  from gptjax.planner import memory_model
  C, T = BASE.n_embd, BASE.block_size
  assert memory_model.block_channels(BASE) == 12 * C
  assert memory_model.block_weights(BASE) == 12 * C * C
  config = dataclasses.replace(BASE, mlp="swiglu", n_kv_head=1)
  F, kv = config.mlp_width, config.head_dim
  assert memory_model.block_weights(config) == C * (C + 2 * kv) + C * C + 3 * F * C
  counts = params_lib.count_params(config)
  assert memory_model.block_weights(config) == counts.attention + counts.mlp  # no biases here
  generation = memory_model.generation_memory(config, batch=3)
  assert generation.kv_cache == 2 * config.n_layer * 3 * T * kv * 4
  assert generation.params == 4 * params_lib.count_pytree_params(config)


COUNTERPARTS = {
    "recipes/shakespeare_char_cpu_modern": "recipes/shakespeare_char_cpu",
    "modern/tiny_char": "tiny_char",
    "modern/small": "small",
}


@pytest.mark.parametrize("modern, counterpart", COUNTERPARTS.items())
def test_modern_presets_keep_their_counterparts_shape_budget_and_count_within_5_percent(
    modern, counterpart):
  """Every modern preset validates, counts exactly (analytic == pytree), has its counterpart's
  shape, batch and budget and a parameter count within 5% of it, and uses the options."""
  from gptjax import presets
  from gptjax.config import validate
  new, old = presets.load(modern), presets.load(counterpart)
  validate(new)
  for field in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "batch_size",
                "max_iters", "dropout"):
    assert new[field] == old[field], field
  new_model, old_model = ModelConfig.from_config(new), ModelConfig.from_config(old)
  count = params_lib.count_params(new_model).total
  assert count == params_lib.count_pytree_params(new_model)
  assert abs(count / params_lib.count_params(old_model).total - 1) < 0.05
  assert (new.positions, new.norm, new.mlp, new.qk_norm) == ("rope", "rmsnorm", "relu2", True)
  assert (new.optimizer, new.lr_schedule) == ("muon", "wsd")
  assert set(COUNTERPARTS) == {name for name in presets.catalogue() if "modern" in name}
