"""The optimizer, all optax: a warmup + decay schedule, AdamW or Muon, clipping.

`optimizer="adamw"` (the default) is nanoGPT's: AdamW with a weight-decay mask on every parameter.
`optimizer="muon"` gives the hidden weight matrices (the kernels that map the residual stream to
attention heads or MLP units and back) optax's Muon, which orthogonalises their momentum, and every
other parameter (token and position embeddings, an untied head, norms, biases) nanoGPT's AdamW.
Which parameter gets which follows from the logical axis names the model gives every parameter
(`muon_dimension_numbers`); `python -m gptjax.show_configs --config=NAME
--config.optimizer=muon` prints the table.

Gradient accumulation lives in the train step (gptjax/step.py), which averages the gradients of
`grad_accum_steps` micro-batches before one update, so k micro-batches of b give the update of one
batch of k*b.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from optax.contrib import MuonDimensionNumbers

DECAYED_LEAVES = ("kernel", "wte", "wpe")  # weight matrices and embeddings; never biases or norms
# The residual stream's logical axis: a hidden kernel maps it to an inner space or back.
RESIDUAL_AXIS = "embed"
# Axes that index independent matrices within one kernel: the q/k/v split (unnamed) and a stack of
# scanned layers. Muon orthogonalises each such matrix on its own.
BATCH_AXES = (None, "layers")


def lr_decay_iters(config: ml_collections.ConfigDict) -> int:
  return config.max_iters if config.lr_decay_iters == -1 else config.lr_decay_iters


def _warmup_then(config, peak: float, after: optax.Schedule) -> optax.Schedule:
  """nanoGPT's linear warmup, peak*(step+1)/(warmup+1), then `after` (counted from the warmup's
  end)."""
  warmup = optax.linear_schedule(peak / (config.warmup_iters + 1), peak, config.warmup_iters)
  return optax.join_schedules([warmup, after], [config.warmup_iters])


def learning_rate_schedule(config: ml_collections.ConfigDict,
                           peak: float | None = None) -> optax.Schedule:
  """config.lr_schedule with warmup, from 0 to `peak` (default learning_rate) and down to min_lr
  scaled like the peak (min_lr / learning_rate of it).

    cosine        nanoGPT's: cosine to the floor at lr_decay_iters, then the floor
    linear        straight down to the floor at lr_decay_iters, then the floor
    constant      the peak after warmup
    wsd           warmup-stable-decay: the peak until the last lr_decay_fraction of
                  lr_decay_iters, then straight down to the floor
    inverse_sqrt  peak * sqrt(warmup / step) after warmup (never below the floor)
  """
  peak = config.learning_rate if peak is None else peak
  floor = config.min_lr * peak / config.learning_rate
  warmup, decay_end = config.warmup_iters, max(lr_decay_iters(config), config.warmup_iters + 1)
  kind = config.lr_schedule
  if kind == "cosine":  # bit for bit what gptjax always ran
    return optax.warmup_cosine_decay_schedule(init_value=peak / (warmup + 1),
                                              peak_value=peak,
                                              warmup_steps=warmup,
                                              decay_steps=decay_end,
                                              end_value=floor)
  if kind == "linear":
    return _warmup_then(config, peak, optax.linear_schedule(peak, floor, decay_end - warmup))
  if kind == "constant":
    return _warmup_then(config, peak, optax.constant_schedule(peak))
  if kind == "wsd":
    decay_steps = max(1, round(config.lr_decay_fraction * decay_end))
    stable_steps = max(0, decay_end - decay_steps - warmup)
    return _warmup_then(
        config, peak,
        optax.join_schedules(
            [optax.constant_schedule(peak),
             optax.linear_schedule(peak, floor, decay_steps)], [stable_steps]))
  if kind == "inverse_sqrt":
    start = max(warmup, 1)

    def inverse_sqrt(count):  # join_schedules evaluates it at counts < 0 too (then discarded)
      return jnp.maximum(floor, peak * jnp.sqrt(start / (jnp.maximum(count, 0) + start)))

    return _warmup_then(config, peak, inverse_sqrt)
  raise ValueError(f"unknown lr_schedule {kind!r}")  # validate() names the choices first


def weight_decay_mask(params):
  """True for the leaves AdamW decays: kernels and embeddings (nanoGPT: every 2-D+ weight)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) in DECAYED_LEAVES, params)


# optax.apply_if_finite applies a non-finite update after this many in a row; gptjax stops itself at
# config.skip_nonfinite_updates (training.metrics.Recorder), long before.
NEVER = 2**31 - 1


def muon_dimension_numbers(name: str, axes) -> MuonDimensionNumbers | None:
  """How Muon sees the parameter `name` with logical `axes`, or None for AdamW.

  Muon takes the kernels of the hidden layers: those with the residual axis ("embed") first (it
  is their input: c_attn (C, 3, H, D), c_fc (C, 4C)) or last (their output: the attention's
  c_proj (H, D, C), the MLP's c_proj (4C, C)). The other named axes are the matrix's other side,
  flattened (H x D for the heads); unnamed axes and a stacked "layers" axis index separate
  matrices (q, k and v are orthogonalised apart, as are the layers). A kernel with a vocabulary
  axis (an untied head), embeddings, norms and biases go to AdamW.
  """
  axes = tuple(axes)
  if name != "kernel" or "vocab" in axes:
    return None
  matrix = [i for i, axis in enumerate(axes) if axis not in BATCH_AXES]
  if len(matrix) < 2 or RESIDUAL_AXIS not in (axes[matrix[0]], axes[matrix[-1]]):
    raise ValueError(f"no Muon rule for a kernel with logical axes {axes}: the residual axis "
                     f"{RESIDUAL_AXIS!r} must be its first or last matrix axis")
  if axes[matrix[0]] == RESIDUAL_AXIS:
    return MuonDimensionNumbers(reduction_axis=matrix[0], output_axis=tuple(matrix[1:]))
  return MuonDimensionNumbers(reduction_axis=tuple(matrix[:-1]), output_axis=matrix[-1])


def _leaf_name(path) -> str:
  return str(getattr(path[-1], "key", path[-1]))


def _is_axes(x) -> bool:
  return isinstance(x, (tuple, jax.sharding.PartitionSpec))


def muon_assignment(param_axes) -> dict[str, MuonDimensionNumbers | None]:
  """keystr(path) -> Muon's dimension numbers (None: AdamW) for every parameter, from a tree of
  logical axis names (nn.get_partition_spec of the boxed params)."""
  leaves = jax.tree_util.tree_leaves_with_path(param_axes, is_leaf=_is_axes)
  return {
      jax.tree_util.keystr(path): muon_dimension_numbers(_leaf_name(path), axes)
      for path, axes in leaves
  }


def assignment_table(param_axes, abstract_params) -> list[tuple[str, tuple, str, str]]:
  """(parameter, shape, optimizer, what Muon orthogonalises) for `python -m gptjax.describe`."""
  dims = muon_assignment(param_axes)
  rows = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_params):
    dim = dims[jax.tree_util.keystr(path)]
    if dim is None:
      rows.append((jax.tree_util.keystr(path), leaf.shape, "adamw", ""))
      continue
    as_tuple = lambda a: (a,) if isinstance(a, int) else tuple(a)
    matrix = set(as_tuple(dim.reduction_axis) + as_tuple(dim.output_axis))
    side = lambda a: "x".join(str(leaf.shape[i]) for i in as_tuple(a))
    batch = [str(leaf.shape[i]) for i in range(len(leaf.shape)) if i not in matrix]
    rows.append((jax.tree_util.keystr(path), leaf.shape, "muon",
                 (f"{'x'.join(batch)} matrices of " if batch else "") +
                 f"{side(dim.reduction_axis)} -> {side(dim.output_axis)}"))
  return rows


def _adamw(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  return optax.adamw(learning_rate_schedule(config),
                     b1=config.beta1,
                     b2=config.beta2,
                     eps=1e-8,
                     weight_decay=config.weight_decay,
                     mask=weight_decay_mask)


def _muon(config: ml_collections.ConfigDict, param_axes) -> optax.GradientTransformation:
  """optax's Muon on the hidden kernels, nanoGPT's AdamW on the rest (optax.partition)."""
  dims = muon_assignment(param_axes)
  labels = jax.tree_util.tree_map_with_path(lambda path, _: "adamw"
                                            if dims[jax.tree_util.keystr(path)] is None else "muon",
                                            param_axes,
                                            is_leaf=_is_axes)

  def dimension_numbers(params: Any):
    # Inside the partition the AdamW leaves are optax.MaskedNode()s, which have no leaves.
    return jax.tree_util.tree_map_with_path(lambda path, _: dims[jax.tree_util.keystr(path)],
                                            params)

  muon = optax.contrib.muon(learning_rate_schedule(config, config.muon_learning_rate),
                            beta=config.muon_momentum,
                            weight_decay=config.muon_weight_decay,
                            muon_weight_dimension_numbers=dimension_numbers)
  return optax.partition({"adamw": _adamw(config), "muon": muon}, labels)


def make_optimizer(config: ml_collections.ConfigDict,
                   param_axes=None) -> optax.GradientTransformation:
  """clip(global norm) -> AdamW(schedule, betas, masked decoupled weight decay), or with
  optimizer="muon" -> Muon on the hidden kernels and AdamW on the rest; with
  skip_nonfinite_updates, inside optax.apply_if_finite, which skips (zero update, state kept) an
  update whose gradients hold a NaN or an infinity. Its skipped updates do not advance the
  optimizer's count, so the schedule lags the logged lr by the number skipped.

  Args:
    config: the run's config.
    param_axes: the params' logical axis names (a tree of PartitionSpecs, as
      nn.get_partition_spec gives them); needed by Muon only.
  """
  if config.optimizer == "muon":
    if param_axes is None:
      raise ValueError("optimizer 'muon' needs the parameters' logical axes")
    update = _muon(config, param_axes)
  else:
    update = _adamw(config)
  # identity() when clipping is off keeps the state's structure, so a run can resume either way.
  clip = optax.clip_by_global_norm(config.grad_clip) if config.grad_clip > 0 else optax.identity()
  chain = optax.chain(clip, update)
  if config.skip_nonfinite_updates:
    return optax.apply_if_finite(chain, max_consecutive_errors=NEVER)
  return chain
