"""The optax optimizer: nanoGPT's schedule, the weight-decay mask, gradient accumulation."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from gptjax import params as params_lib
from gptjax import presets, sharding
from gptjax.config import ModelConfig, validate
from gptjax.errors import ConfigError
from gptjax.optim import (assignment_table, learning_rate_schedule, make_optimizer,
                          muon_dimension_numbers, weight_decay_mask)
from gptjax.planner import estimate
from gptjax.step import build, global_batch, mesh_context


def nanogpt_lr(it, learning_rate, min_lr, warmup_iters, lr_decay_iters):
  """nanoGPT train.py's get_lr, copied in spirit line by line."""
  if it < warmup_iters:
    return learning_rate * (it + 1) / (warmup_iters + 1)
  if it > lr_decay_iters:
    return min_lr
  decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
  coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
  return min_lr + coeff * (learning_rate - min_lr)


def test_schedule_matches_nanogpt(tiny):
  config = tiny(learning_rate=1e-3,
                min_lr=1e-4,
                warmup_iters=100,
                max_iters=2000,
                lr_decay_iters=2000)
  schedule = learning_rate_schedule(config)
  for it in [0, 1, 50, 99, 100, 101, 500, 1000, 1999, 2000, 2500]:
    np.testing.assert_allclose(float(schedule(it)),
                               nanogpt_lr(it, 1e-3, 1e-4, 100, 2000),
                               rtol=1e-5)


def test_weight_decay_applies_to_weights_not_biases_or_norms():
  params = {
      "wte": 1,
      "wpe": 1,
      "h_0": {
          "attn": {
              "c_attn": {
                  "kernel": 1,
                  "bias": 1
              }
          },
          "ln_1": {
              "scale": 1,
              "bias": 1
          }
      },
      "ln_f": {
          "scale": 1
      }
  }
  mask = weight_decay_mask(params)
  assert mask == {
      "wte": True,
      "wpe": True,
      "h_0": {
          "attn": {
              "c_attn": {
                  "kernel": True,
                  "bias": False
              }
          },
          "ln_1": {
              "scale": False,
              "bias": False
          }
      },
      "ln_f": {
          "scale": False
      }
  }


def one_update(config, windows):
  mesh = sharding.make_mesh(config, jax.devices()[:1])
  setup = build(config, mesh)
  with mesh_context(mesh):
    state = setup.init(jax.random.key(0))
    state, metrics = setup.train_step(state, global_batch(windows, mesh, windows.shape[1]))
  return jax.device_get(state.params), float(metrics["loss"])


def test_grad_accumulation_equals_one_big_batch(tiny):
  windows = np.random.default_rng(0).integers(0, 256, size=(1, 8, 17)).astype(np.int32)
  big_params, big_loss = one_update(tiny(batch_size=8, grad_accum_steps=1), windows)
  acc_params, acc_loss = one_update(tiny(batch_size=4, grad_accum_steps=2),
                                    windows.reshape(2, 4, 17))
  np.testing.assert_allclose(acc_loss, big_loss, rtol=1e-6)
  # Adam divides by sqrt(v): where a gradient is ~0 float rounding shows at ~1e-7 absolute,
  # against first updates of ~lr / (warmup + 1) = 1e-3.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), acc_params,
               big_params)
  # ... and the update is real: accumulating over the two halves differs from either half alone.
  half_params, _ = one_update(tiny(batch_size=4), windows[:, :4])
  assert not np.allclose(half_params["wte"], big_params["wte"])


# --- Schedules ----------------------------------------------------------------------------------------


def reference_lr(kind, it, lr, floor, warmup, decay_end, fraction=0.2):
  """Each schedule written from its definition in gptjax/config.py, step by step."""
  if it < warmup:
    return lr * (it + 1) / (warmup + 1)
  if kind == "constant":
    return lr
  if kind == "inverse_sqrt":
    return max(floor, lr * math.sqrt(max(warmup, 1) / (it - warmup + max(warmup, 1))))
  if it >= decay_end:
    return floor
  if kind == "linear":
    return lr + (floor - lr) * (it - warmup) / (decay_end - warmup)
  decay_start = decay_end - round(fraction * decay_end)  # wsd
  if it < decay_start:
    return lr
  return lr + (floor - lr) * (it - decay_start) / (decay_end - decay_start)


@pytest.mark.parametrize("kind", ["linear", "constant", "wsd", "inverse_sqrt"])
def test_schedules_follow_their_definitions(tiny, kind):
  config = tiny(learning_rate=1e-3,
                min_lr=1e-4,
                warmup_iters=100,
                max_iters=2000,
                lr_schedule=kind,
                lr_decay_fraction=0.25)
  schedule = learning_rate_schedule(config)
  for it in [0, 1, 50, 99, 100, 101, 500, 1000, 1499, 1500, 1501, 1999, 2000, 2500]:
    np.testing.assert_allclose(float(schedule(it)),
                               reference_lr(kind, it, 1e-3, 1e-4, 100, 2000, 0.25),
                               rtol=1e-5,
                               err_msg=f"{kind} at {it}")
  # Muon's schedule has the same shape, scaled to its own peak.
  muon = learning_rate_schedule(config, peak=0.02)
  for it in [0, 100, 1700, 2500]:
    np.testing.assert_allclose(float(muon(it)), 20 * float(schedule(it)), rtol=1e-5)


@pytest.mark.parametrize("field, value, fragment", [
    ("optimizer", "sgd", "--config.optimizer=adamw (or muon)"),
    ("lr_schedule", "step", "--config.lr_schedule=cosine (or linear, constant, wsd, inverse_sqrt)"),
    ("lr_decay_fraction", 0.0, "(0, 1]"),
    ("muon_learning_rate", -1.0, "positive"),
    ("muon_momentum", 1.0, "[0, 1)"),
    ("muon_weight_decay", -0.1, "negative"),
])
def test_bad_optimizer_fields_are_one_clear_error(tiny, field, value, fragment):
  config = tiny(**{field: value})
  with pytest.raises(ConfigError) as error:
    validate(config)
  message = str(error.value)
  assert f"'{field}'" in message and fragment in message and "Fix:" in message
  assert "\n" not in message


# --- Muon: which parameter gets which optimizer, and what it orthogonalises -------------------------


def abstract_model(config):
  model = ModelConfig.from_config(config)
  boxed = params_lib.abstract_params(model)
  return nn.get_partition_spec(boxed), nn.meta.unbox(boxed)


def test_muon_takes_the_hidden_kernels_and_adamw_the_rest(tiny):
  axes, abstract = abstract_model(tiny(bias=True))
  table = {path: (optimizer, what) for path, _, optimizer, what in assignment_table(axes, abstract)}
  for path, (optimizer, what) in table.items():
    hidden_kernel = "['h_" in path and path.endswith("['kernel']")
    assert optimizer == ("muon" if hidden_kernel else "adamw"), path
  C, H, D = 32, 2, 16
  # q, k and v are three C -> H*D matrices; the attention's output an H*D -> C matrix.
  assert table["['h_0']['attn']['c_attn']['kernel']"] == ("muon", f"3 matrices of {C} -> {H}x{D}")
  assert table["['h_1']['attn']['c_proj']['kernel']"] == ("muon", f"{H}x{D} -> {C}")
  assert table["['h_0']['mlp']['c_fc']['kernel']"] == ("muon", f"{C} -> {4 * C}")
  assert table["['h_0']['mlp']['c_proj']['kernel']"] == ("muon", f"{4 * C} -> {C}")
  # An untied head (a kernel with a vocabulary axis) stays with AdamW.
  assert muon_dimension_numbers("kernel", ("embed", "vocab")) is None


def muon_config(tiny, **overrides):
  return tiny(optimizer="muon",
              lr_schedule="constant",
              warmup_iters=0,
              grad_clip=0.0,
              muon_weight_decay=0.1,
              **overrides)


def random_like(tree, seed):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return treedef.unflatten(
      [jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)])


def plain_muon_updates(config, matrices, grads_2d, steps):
  """optax's Muon on plain 2-D (fan_in, fan_out) matrices, its default rule, `steps` updates."""
  tx = optax.contrib.muon(config.muon_learning_rate,
                          beta=config.muon_momentum,
                          weight_decay=config.muon_weight_decay)
  state = tx.init(matrices)
  for grads in grads_2d:
    updates, state = tx.update(grads, state, matrices)
  return updates


def test_muon_orthogonalises_q_k_v_and_the_heads_as_2d_matrices(tiny):
  """The update of every hidden kernel equals optax's 2-D Muon on GPT-2's matrices (q, k and v of
  c_attn each C x C, the attention's c_proj (H*D) x C, the MLP's), reshaped back."""
  config = muon_config(tiny)
  axes, abstract = abstract_model(config)
  params = random_like(abstract, 0)
  grads = [random_like(abstract, 1), random_like(abstract, 2)]
  tx = make_optimizer(config, axes)
  state = tx.init(params)
  for g in grads:
    updates, state = tx.update(g, state, params)
  C, H, D = 32, 2, 16

  def to_2d(block):  # GPT-2's matrices of one block, 2-D
    c_attn = block["attn"]["c_attn"]["kernel"]
    return dict(q=c_attn[:, 0].reshape(C, H * D),
                k=c_attn[:, 1].reshape(C, H * D),
                v=c_attn[:, 2].reshape(C, H * D),
                proj=block["attn"]["c_proj"]["kernel"].reshape(H * D, C),
                fc=block["mlp"]["c_fc"]["kernel"],
                mlp_proj=block["mlp"]["c_proj"]["kernel"])

  for layer in ("h_0", "h_1"):
    expected = plain_muon_updates(config, to_2d(params[layer]), [to_2d(g[layer]) for g in grads], 2)
    got = to_2d(updates[layer])
    for name in expected:
      np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-7, err_msg=name)
  # ... and the other parameters took AdamW's update (nanoGPT's AdamW on them alone).
  others = {"wte": params["wte"], "ln_f": params["ln_f"]}
  adamw = optax.adamw(config.learning_rate,
                      b1=config.beta1,
                      b2=config.beta2,
                      eps=1e-8,
                      weight_decay=config.weight_decay,
                      mask=weight_decay_mask)
  adam_state = adamw.init(others)
  for g in grads:
    adam_updates, adam_state = adamw.update({
        "wte": g["wte"],
        "ln_f": g["ln_f"]
    }, adam_state, others)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), adam_updates, {
      "wte": updates["wte"],
      "ln_f": updates["ln_f"]
  })


def test_muon_treats_a_stacked_layers_axis_as_separate_matrices(tiny):
  """Scanned layers stack their parameters on a leading `layers` axis: Muon's update of the stack
  equals the updates of the layers one by one."""
  config = muon_config(tiny)
  axes, abstract = abstract_model(config)
  layers = ("h_0", "h_1")
  stacked_abstract = dict(wte=abstract["wte"],
                          h=jax.tree.map(lambda a: jax.ShapeDtypeStruct((2, *a.shape), a.dtype),
                                         abstract["h_0"]))
  stacked_axes = dict(wte=axes["wte"],
                      h=jax.tree.map(lambda spec: P("layers", *spec),
                                     axes["h_0"],
                                     is_leaf=lambda x: isinstance(x, P)))
  rows = {path: what for path, _, _, what in assignment_table(stacked_axes, stacked_abstract)}
  assert rows["['h']['attn']['c_attn']['kernel']"] == "2x3 matrices of 32 -> 2x16"
  assert rows["['h']['mlp']['c_fc']['kernel']"] == "2 matrices of 32 -> 128"
  params = random_like(stacked_abstract, 0)
  grads = random_like(stacked_abstract, 1)
  tx = make_optimizer(config, stacked_axes)
  stacked_updates, _ = tx.update(grads, tx.init(params), params)
  per_layer_tx = make_optimizer(config, dict(wte=axes["wte"], h_0=axes["h_0"], h_1=axes["h_1"]))
  unstack = lambda tree: dict(wte=tree["wte"],
                              **{
                                  name: jax.tree.map(lambda x, i=i: x[i], tree["h"])
                                  for i, name in enumerate(layers)
                              })
  per_layer_params = unstack(params)
  per_layer_updates, _ = per_layer_tx.update(unstack(grads), per_layer_tx.init(per_layer_params),
                                             per_layer_params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               unstack(stacked_updates), per_layer_updates)


def test_muon_state_is_sharded_like_the_params(tiny):
  """Every moment is laid out like its parameter (FSDP along `embed`), step counts replicated."""
  config = muon_config(tiny)
  setup = build(config, sharding.make_mesh(config))
  params = jax.tree_util.tree_leaves_with_path(setup.abstract_state.params)
  by_path = {jax.tree_util.keystr(path): leaf.sharding for path, leaf in params}
  matched = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(setup.abstract_state.opt_state):
    key = jax.tree_util.keystr(path)
    owner = [p for p in by_path if key.endswith(p)]
    if owner:
      assert leaf.sharding == by_path[max(owner, key=len)], key
      matched += 1
    else:
      assert leaf.sharding.spec == P(), key
  muon_params = sum(
      1 for path, _ in params
      if "['h_" in jax.tree_util.keystr(path) and jax.tree_util.keystr(path).endswith("['kernel']"))
  # AdamW's two moments for the rest, Muon's one for the hidden kernels.
  assert matched == 2 * (len(params) - muon_params) + muon_params


def test_planner_counts_muons_single_moment():
  config = presets.load("configs/small_char.py")
  config.optimizer = "muon"
  model = ModelConfig.from_config(config)
  total = params_lib.count_params(model).total
  C, L = config.n_embd, config.n_layer
  matrices = L * (3 * C * C + C * C + 8 * C * C)  # c_attn, c_proj, c_fc, c_proj (no biases)
  mesh = jax.sharding.AbstractMesh((1, 1, 1), ("data", "fsdp", "tensor"))
  _, muon_bytes = estimate.state_bytes(config, mesh)
  config.optimizer = "adamw"
  _, adamw_bytes = estimate.state_bytes(config, mesh)
  assert 0 < adamw_bytes - 8 * total <= 16
  assert 0 < muon_bytes - 4 * (2 * (total - matrices) + matrices) <= 64
