"""Runs sharded computations on fake CPU devices and prints their results as JSON.

tests/test_sharding.py starts this in a subprocess with XLA_FLAGS asking for 8 host devices (the
flag must be set before JAX starts, so it cannot run inside the pytest process). The checks compare
the numbers this prints.

  python tests/sharding_worker.py {step,shards,restore,muon,fused,modern} OUT_DIR
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from conftest import tiny_config  # noqa: E402
from gptjax import sharding  # noqa: E402
from gptjax.checkpoint import Checkpointer  # noqa: E402
from gptjax.params import to_layout  # noqa: E402
from gptjax.step import build, global_batch, mesh_context  # noqa: E402
from gptjax.training.loop import train  # noqa: E402

MESHES = [(8, 1, 1), (1, 8, 1), (1, 4, 2), (2, 2, 2)]


def config_for(out_dir, mesh, **overrides):
  data, fsdp, tensor = mesh
  overrides = dict(dict(dropout=0.1), **overrides)
  return tiny_config(pathlib.Path(out_dir),
                     batch_size=8,
                     mesh=dict(data=data, fsdp=fsdp, tensor=tensor),
                     **overrides)


def one_step(config, devices, windows):
  """Initial and updated params, loss and grad norm of one train step on `devices`, and whether
  its gradients were all-reduced as one flat buffer (pure data parallelism without dropout)."""
  mesh = sharding.make_mesh(config, devices)
  setup = build(config, mesh)
  with mesh_context(mesh):
    state = setup.init(jax.random.key(0))
    initial = jax.device_get(state.params)
    batch = global_batch(windows, mesh, config.batch_size)
    flat = "psum" in str(jax.make_jaxpr(setup.train_step)(state, batch))  # the flat all-reduce
    state, metrics = setup.train_step(state, batch)
    return initial, jax.device_get(state.params), jax.device_get(metrics), flat


def max_difference(a, b) -> float:
  return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def check_step(out_dir):
  windows = np.random.default_rng(0).integers(0, 256, size=(1, 8, 17)).astype(np.int32)
  results = {}
  # With dropout every mesh draws the unsharded step's masks; without it, pure data parallelism
  # takes the flat all-reduce path (sharding.flat_all_reduce). One mesh runs the layers scanned
  # (without dropout: a scan draws other masks), its parameters unstacked to compare.
  for dropout, meshes in ((0.1, MESHES), (0.0, [(8, 1, 1), (2, 1, 1), (1, 8, 1),
                                                (2, 2, 2, "scan")])):
    reference = one_step(config_for(out_dir, (1, 1, 1), dropout=dropout),
                         jax.devices()[:1], windows)
    ref_init, ref_params, ref_metrics, _ = reference
    for mesh in meshes:
      data, fsdp, tensor = mesh[:3]
      devices = jax.devices()[:data * fsdp * tensor]
      scan = mesh[3:] == ("scan",)
      init, params, metrics, flat = one_step(
          config_for(out_dir, mesh[:3], dropout=dropout, scan_layers=scan), devices, windows)
      init, params = to_layout((init, params), scan_layers=False)
      results[f"{mesh[:3]} dropout {dropout}" + (" scan" if scan else "")] = dict(
          loss=float(metrics["loss"]),
          reference_loss=float(ref_metrics["loss"]),
          grad_norm=float(metrics["grad_norm"]),
          reference_grad_norm=float(ref_metrics["grad_norm"]),
          init_difference=max_difference(init, ref_init),
          param_difference=max_difference(params, ref_params),
          update_size=max_difference(ref_params, ref_init),
          flat_all_reduce=flat)
  return results


def check_shards(out_dir):
  """For an fsdp=8 mesh: each sharded leaf's per-device shard and the share of all scalars sharded."""
  config = config_for(out_dir, (1, 8, 1))
  mesh = sharding.make_mesh(config)
  setup = build(config, mesh)
  with mesh_context(mesh):
    state = setup.init(jax.random.key(0))
  report = {}
  for part in ("params", "opt_state"):
    leaves = jax.tree_util.tree_leaves_with_path(getattr(state, part))
    rows = []
    for path, leaf in leaves:
      if leaf.ndim == 0:
        continue
      shard_sizes = {int(np.prod(s.data.shape)) for s in leaf.addressable_shards}
      rows.append(
          dict(path=jax.tree_util.keystr(path),
               size=int(leaf.size),
               shard_sizes=sorted(shard_sizes),
               devices=len(leaf.sharding.device_set),
               spec=str(leaf.sharding.spec)))
    report[part] = rows
  return report


def check_restore(out_dir):
  """Train 4 steps on (1,8,1); restore onto (2,2,2) and 1 device; continue on (2,2,2) to 8."""
  saved = config_for(out_dir, (1, 8, 1), model_name="moved", max_iters=4, lr_decay_iters=8)
  train(saved)
  run_dir = os.path.join(saved.out_dir, "moved")
  checkpointer = Checkpointer(run_dir, read_only=True)
  source_mesh = sharding.make_mesh(saved)
  source = build(saved, source_mesh)
  reference, _ = checkpointer.restore(4, source.abstract_state.params)
  reference = jax.device_get(reference)
  differences = {}
  for name, mesh_shape, devices in (("(2, 2, 2)", (2, 2, 2), jax.devices()), ("1 device", (1, 1, 1),
                                                                              jax.devices()[:1])):
    config = config_for(out_dir, mesh_shape)
    mesh = sharding.make_mesh(config, devices)
    setup = build(config, mesh)
    params, opt_state = checkpointer.restore(4, setup.abstract_state.params,
                                             setup.abstract_state.opt_state)
    shardings_ok = all(leaf.sharding == target.sharding for leaf, target in zip(
        jax.tree.leaves(params), jax.tree.leaves(setup.abstract_state.params)))
    differences[name] = dict(params=max_difference(jax.device_get(params), reference),
                             devices=len(jax.tree.leaves(params)[0].sharding.device_set),
                             shardings_match_target=shardings_ok)
  checkpointer.close()
  resumed = config_for(out_dir, (2, 2, 2), model_name="moved", max_iters=8, lr_decay_iters=8)
  train(resumed)
  straight = config_for(out_dir, (1, 8, 1), model_name="straight", max_iters=8, lr_decay_iters=8)
  train(straight)
  losses = {}
  for name in ("moved", "straight"):
    with open(os.path.join(out_dir, "out", name, "metrics.jsonl")) as f:
      losses[name] = [json.loads(line)["train_loss"] for line in f]
  return dict(restored=differences, losses=losses)


def check_muon(out_dir):
  """Two Muon + WSD steps on sharded meshes against one device, and how its state is sharded."""
  windows = np.random.default_rng(0).integers(0, 256, size=(2, 1, 8, 17)).astype(np.int32)
  settings = dict(optimizer="muon", lr_schedule="wsd", warmup_iters=0, max_iters=4)

  def two_steps(mesh_shape):
    config = config_for(out_dir, mesh_shape, **settings)
    data, fsdp, tensor = mesh_shape
    mesh = sharding.make_mesh(config, jax.devices()[:data * fsdp * tensor])
    setup = build(config, mesh)
    with mesh_context(mesh):
      state = setup.init(jax.random.key(0))
      initial = jax.device_get(state.params)
      for step_windows in windows:
        state, _ = setup.train_step(state, global_batch(step_windows, mesh, config.batch_size))
      moments = [(leaf.size, sorted({int(np.prod(s.data.shape))
                                     for s in leaf.addressable_shards}))
                 for leaf in jax.tree.leaves(state.opt_state)
                 if leaf.ndim > 0 and leaf.size > 3]  # ns_coeffs (3,) is replicated
      return initial, jax.device_get(state.params), moments

  ref_init, ref_params, _ = two_steps((1, 1, 1))
  results = {}
  for mesh_shape in [(1, 8, 1), (2, 2, 2), (1, 4, 2)]:
    _, params, moments = two_steps(mesh_shape)
    results[str(mesh_shape)] = dict(param_difference=max_difference(params, ref_params),
                                    update_size=max_difference(ref_params, ref_init),
                                    moments=moments)
  return results


def check_fused(out_dir):
  """One step with splash attention (interpret mode) on meshes that split the batch and the heads
  (under shard_map), and on one that is pure data parallelism (the kernel inside the flat
  all-reduce's shard_map): losses and parameters against the one-device einsum step."""
  windows = np.random.default_rng(0).integers(0, 256, size=(1, 8, 129)).astype(np.int32)
  fused = dict(block_size=128, dropout=0.0, attention="splash")
  _, ref_params, ref_metrics, _ = one_step(
      config_for(out_dir, (1, 1, 1), **{
          **fused, "attention": "xla"
      }),
      jax.devices()[:1], windows)
  results = {}
  for mesh in ((1, 4, 2), (4, 1, 1)):
    devices = jax.devices()[:mesh[0] * mesh[1] * mesh[2]]
    _, params, metrics, flat = one_step(config_for(out_dir, mesh, **fused), devices, windows)
    results[str(mesh)] = dict(loss=float(metrics["loss"]),
                              reference_loss=float(ref_metrics["loss"]),
                              param_difference=max_difference(params, ref_params),
                              flat_all_reduce=flat)
  return results


def check_modern(out_dir):
  """One Muon step of a modern model (RoPE, RMSNorm, SwiGLU, qk_norm, grouped-query attention,
  an untied head, the soft-cap) on meshes that split batch, weights, heads and vocabulary, against
  one device; and one AdamW step with dropout and a chunked loss."""
  windows = np.random.default_rng(0).integers(0, 256, size=(1, 8, 17)).astype(np.int32)
  modern = dict(n_head=4,
                positions="rope",
                norm="rmsnorm",
                mlp="swiglu",
                qk_norm=True,
                n_kv_head=2,
                tie_embeddings=False,
                logit_softcap=30.0)
  results = {}
  for name, settings in (("muon", dict(modern, dropout=0.0,
                                       optimizer="muon")), ("adamw dropout chunked",
                                                            dict(modern,
                                                                 dropout=0.1,
                                                                 loss_chunk_tokens=24))):
    ref_init, ref_params, ref_metrics, _ = one_step(config_for(out_dir, (1, 1, 1), **settings),
                                                    jax.devices()[:1], windows)
    for mesh in ((1, 8, 1), (2, 2, 2), (1, 4, 2)):
      devices = jax.devices()[:mesh[0] * mesh[1] * mesh[2]]
      init, params, metrics, _ = one_step(config_for(out_dir, mesh, **settings), devices, windows)
      results[f"{mesh} {name}"] = dict(loss=float(metrics["loss"]),
                                       reference_loss=float(ref_metrics["loss"]),
                                       grad_norm=float(metrics["grad_norm"]),
                                       reference_grad_norm=float(ref_metrics["grad_norm"]),
                                       init_difference=max_difference(init, ref_init),
                                       param_difference=max_difference(params, ref_params),
                                       update_size=max_difference(ref_params, ref_init))
  return results


if __name__ == "__main__":
  scenario, out_dir = sys.argv[1], sys.argv[2]
  result = {
      "step": check_step,
      "shards": check_shards,
      "restore": check_restore,
      "muon": check_muon,
      "fused": check_fused,
      "modern": check_modern
  }[scenario](out_dir)
  print("RESULT " + json.dumps(result))
