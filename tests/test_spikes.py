"""Loss spikes: the z-loss against an independent computation, and updates with non-finite
gradients skipped (params and optimizer state kept) instead of stopping the run."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_config
from gptjax import sharding
from gptjax.step import build, global_batch, mesh_context, objective
from gptjax.training.metrics import read_records


def windows_for(config, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, config.vocab_size,
                      size=(1, config.batch_size, config.block_size + 1)).astype(np.int32)


@pytest.mark.parametrize("accum, chunk", [(1, 0), (2, 0), (1, 12), (2, 12)])
def test_z_loss_objective_and_gradient_equal_an_independent_computation(tmp_path, accum, chunk):
  """The z-loss on the plain loss and on the chunked one (loss_chunk_tokens: its logsumexps, a
  chunk that does not divide the 4 x 16 tokens) against full logits, computed here."""
  z = 1e-2
  config = tiny_config(tmp_path,
                       z_loss=z,
                       grad_accum_steps=accum,
                       grad_clip=0.0,
                       loss_chunk_tokens=chunk)
  mesh = sharding.make_mesh(config)
  setup = build(config, mesh)
  windows = np.random.default_rng(1).integers(0, 256, size=(accum, 4, 17)).astype(np.int32)

  def reference(params):  # optax's cross-entropy plus the term on full logits, per micro-batch
    totals = []
    for micro in windows:
      logits = setup.model.apply({"params": params}, micro[:, :-1], deterministic=True)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, micro[:, 1:]).mean()
      lse = jax.scipy.special.logsumexp(logits, axis=-1)
      totals.append((ce + z * jnp.mean(lse**2), ce, jnp.mean(lse**2)))
    return jax.tree.map(lambda *x: sum(x) / len(x), *totals)

  with mesh_context(mesh):
    state = setup.init(jax.random.key(0))
    params = jax.device_get(state.params)
    expected_grads = jax.grad(lambda p: reference(p)[0])(params)
    ce, term = reference(params)[1:]
    if accum == 1:
      got, (got_ce, got_term) = objective(params, setup.model, windows[0], None, z)
      np.testing.assert_allclose([got, got_ce, got_term], [reference(params)[0], ce, term],
                                 rtol=2e-6 if chunk else 1e-6)
    new_state, metrics = setup.train_step(state, global_batch(windows, mesh, config.batch_size))
  # The step reports the plain cross-entropy and the term apart, and steps with the objective's
  # gradient: Adam's first update from zero moments is lr * g / (|g| + eps) per entry.
  np.testing.assert_allclose(metrics["loss"], ce, rtol=1e-5)
  np.testing.assert_allclose(metrics["z_loss"], term, rtol=1e-5)
  np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(expected_grads), rtol=1e-4)
  tx = optax.adamw(config.learning_rate / (config.warmup_iters + 1),
                   b1=config.beta1,
                   b2=config.beta2,
                   eps=1e-8,
                   weight_decay=0.0)
  updates, _ = tx.update(expected_grads, tx.init(params), params)
  expected_bias = jax.tree.map(lambda p, u: p + u, params["ln_f"], updates["ln_f"])
  for leaf, want in zip(jax.tree.leaves(jax.device_get(new_state.params["ln_f"])),
                        jax.tree.leaves(expected_bias)):
    np.testing.assert_allclose(leaf, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("chunk", [0, 12])
def test_a_non_finite_update_is_skipped_and_the_state_kept(tmp_path, chunk):
  config = tiny_config(tmp_path, skip_nonfinite_updates=3, loss_chunk_tokens=chunk)
  plain_config = tiny_config(tmp_path, loss_chunk_tokens=chunk)
  mesh = sharding.make_mesh(config)
  setup, plain = build(config, mesh), build(plain_config, mesh)
  batch = lambda seed: global_batch(windows_for(config, seed), mesh, config.batch_size)
  with mesh_context(mesh):
    state = setup.init(jax.random.key(0))
    before = jax.device_get(state)
    params = dict(state.params, wte=state.params["wte"].at[0, 0].set(jnp.inf))
    poisoned = state.replace(params=params)
    poisoned_host = jax.device_get(poisoned)
    after, metrics = setup.train_step(poisoned, batch(0))
    after = jax.device_get(after)
    assert bool(metrics["skipped"]) and int(metrics["skipped_in_a_row"]) == 1
    # Params (the infinity too) and the inner optimizer state are bitwise what they were.
    for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(poisoned_host.params)):
      np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(after.opt_state.inner_state),
                    jax.tree.leaves(before.opt_state.inner_state)):
      np.testing.assert_array_equal(a, b)
    # A finite step afterwards steps like the plain optimizer from the same state.
    good = setup.train_step(setup.init(jax.random.key(0)), batch(1))
    want = plain.train_step(plain.init(jax.random.key(0)), batch(1))
  assert not bool(good[1]["skipped"]) and int(good[1]["skipped_total"]) == 0
  for a, b in zip(jax.tree.leaves(jax.device_get(good[0].params)),
                  jax.tree.leaves(jax.device_get(want[0].params))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


class FakeBar:

  def __init__(self):
    self.lines = []

  def update(self, n):
    pass

  def write(self, line):
    self.lines.append(line)

  def set_postfix(self, **kwargs):
    pass


def test_skipped_updates_are_logged_and_recorded_and_too_many_in_a_row_stop(tmp_path):
  from gptjax.errors import DivergenceError
  from gptjax.training.metrics import MetricsWriter, Recorder
  config = tiny_config(tmp_path, skip_nonfinite_updates=2)
  writer, bar = MetricsWriter(str(tmp_path), enabled=True), FakeBar()
  log = Recorder(config, writer, bar, 0, {}, lambda: 4)

  def step(n, loss, skipped, in_a_row, total):
    metrics = dict(loss=np.float32(loss),
                   lr=np.float32(1e-3),
                   grad_norm=np.float32(1.0),
                   skipped=np.bool_(skipped),
                   skipped_in_a_row=np.int32(in_a_row),
                   skipped_total=np.int32(total))
    record = log.step_done(n, metrics, read_now=True)
    log.write(record)
    return record

  step(1, 5.0, False, 0, 0)
  record = step(2, float("nan"), True, 1, 1)  # a NaN loss does not stop the run: it was skipped
  assert record["skipped"] and record["skipped_updates"] == 1
  assert "skipped 1 update(s) with non-finite gradients" in bar.lines[-1]
  step(3, 4.0, False, 0, 1)
  assert "skipped" not in bar.lines[-1]
  with pytest.raises(DivergenceError, match="2 updates in a row"):
    step(4, float("inf"), True, 2, 3)
  writer.close()
  assert [r["step"] for r in read_records(str(tmp_path / "metrics.jsonl"))] == [1, 2, 3]


def test_turning_skipping_on_at_a_resume_is_one_clear_error(tiny):
  """The optimizer state of a run that skips holds optax.apply_if_finite's counters: a checkpoint
  without them is refused by name (not taken for a damaged one), even with resume_with_changes."""
  from gptjax.errors import CheckpointError
  from gptjax.training.loop import train
  train(tiny(max_iters=2))
  with pytest.raises(CheckpointError, match="skip_nonfinite_updates=0"):
    train(tiny(max_iters=3, skip_nonfinite_updates=5, resume_with_changes=True))
  assert sorted(os.listdir(os.path.join(tiny().out_dir, "tiny", "checkpoints"))) == ["2"]
