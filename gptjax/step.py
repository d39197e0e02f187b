"""One train step: the pure jitted functions and everything they are built from.

  setup = build(config, mesh)         # model, optimizer, shardings, jitted init / train / eval
  state = setup.init(rng)             # born sharded
  state, metrics = setup.train_step(state, global_batch(windows, mesh, batch_size))

gptjax/training runs these in its loop; gptjax/planner lowers and compiles the same
`train_step` for devices it does not have (the fit planner).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from gptjax import attention
from gptjax import config as config_module
from gptjax import sharding
from gptjax.devices import platform_of
from gptjax.config import ModelConfig
from gptjax.losses import chunked_cross_entropy_and_z
from gptjax.model import GPT
from gptjax.params import to_layout
from gptjax.optim import learning_rate_schedule, make_optimizer


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer updates done
  params: Any
  opt_state: Any


def loss_fn(params, model: GPT, windows, dropout_rng=None):
  """Mean next-token cross-entropy of `windows` (B, T+1): inputs [:, :-1], targets [:, 1:]."""
  return objective(params, model, windows, dropout_rng)[1][0]


def objective(params, model: GPT, windows, dropout_rng=None, z_loss: float = 0.0):
  """(what the gradient is taken of, (cross-entropy, z-loss)) for `windows` (B, T+1).

  With `z_loss` > 0 the objective adds z_loss * mean(logsumexp(logits)^2) (PaLM's z-loss, which
  keeps the softmax normaliser near 1 and the logits from drifting into a loss spike); the
  cross-entropy reported stays the plain one. The logsumexp is computed once for both terms (with
  loss_chunk_tokens, chunk by chunk: losses.chunked_cross_entropy_and_z).
  """
  inputs, targets = windows[:, :-1], windows[:, 1:]
  apply = functools.partial(model.apply, {"params": params},
                            inputs,
                            deterministic=dropout_rng is None,
                            rngs=None if dropout_rng is None else {"dropout": dropout_rng})
  if model.config.loss_chunk_tokens:  # never all the (N, V) float32 logits at once
    x, wte = apply(hidden=True)
    cross_entropy, z_term = chunked_cross_entropy_and_z(x, wte.astype(x.dtype), targets.reshape(-1),
                                                        model.config.loss_chunk_tokens,
                                                        model.config.logit_softcap)
    return cross_entropy + z_loss * z_term, (cross_entropy, z_term)
  logits = apply()
  if not z_loss:  # optax's cross-entropy, the program runs without the option have always had
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
    return cross_entropy, (cross_entropy, jnp.zeros((), jnp.float32))
  logits = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)  # (B, T)
  target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  cross_entropy = (lse - target_logits).mean()
  z_term = jnp.square(lse).mean()
  return cross_entropy + z_loss * z_term, (cross_entropy, z_term)


def mean_loss_and_grads(params, windows, rng, *, model: GPT, z_loss: float = 0.0):
  """((mean objective, (cross-entropy, z-loss term)), gradient of the objective) over the A
  micro-batches of `windows` (A, B, T+1)."""
  grad_fn = jax.value_and_grad(functools.partial(objective, z_loss=z_loss), has_aux=True)
  micro_batches = windows.shape[0]
  if micro_batches == 1:
    return grad_fn(params, model, windows[0], rng)

  def accumulate(carry, xs):
    index, micro = xs
    values, grads = grad_fn(params, model, micro, jax.random.fold_in(rng, index))
    return jax.tree.map(jnp.add, carry, (values, grads)), None

  zero = jnp.zeros((), jnp.float32)
  zeros = ((zero, (zero, zero)), jax.tree.map(jnp.zeros_like, params))
  (values, grads), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(micro_batches), windows))
  return jax.tree.map(lambda x: x / micro_batches, (values, grads))


def train_step(state: TrainState,
               windows,
               *,
               model: GPT,
               tx,
               schedule,
               seed: int,
               dropout_rng: str = "threefry2x32",
               flat_all_reduce_mesh: jax.sharding.Mesh | None = None,
               z_loss: float = 0.0):
  """One update from `windows` (A, B, T+1): the mean gradient over A micro-batches, then AdamW.

  Dropout keys come from fold_in(seed, step) with the `dropout_rng` implementation, so a resumed
  run draws the same masks. With `flat_all_reduce_mesh` (pure data parallelism, no dropout)
  gradients are averaged as one buffer. With `z_loss` > 0 the gradient includes the z-loss term
  (see `objective`). When `tx` skips non-finite updates (optax.apply_if_finite, see
  optim.make_optimizer) the metrics say whether this one was skipped and how many in a row.
  """
  rng = jax.random.fold_in(jax.random.key(seed, impl=dropout_rng), state.step)
  loss_and_grads = functools.partial(mean_loss_and_grads, model=model, z_loss=z_loss)
  if flat_all_reduce_mesh is not None:
    loss_and_grads = sharding.flat_all_reduce(loss_and_grads, flat_all_reduce_mesh)
  (_, (loss, z_term)), grads = loss_and_grads(state.params, windows, rng)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = TrainState(step=state.step + 1,
                         params=optax.apply_updates(state.params, updates),
                         opt_state=opt_state)
  metrics = dict(loss=loss, grad_norm=optax.tree.norm(grads), lr=schedule(state.step))
  if z_loss:
    metrics["z_loss"] = z_term
  if isinstance(opt_state, optax.ApplyIfFiniteState):
    metrics.update(skipped=jnp.logical_not(opt_state.last_finite),
                   skipped_in_a_row=opt_state.notfinite_count,
                   skipped_total=opt_state.total_notfinite)
  return new_state, metrics


def eval_step(params, windows, *, model: GPT):
  """Loss of each evaluation batch in `windows` (E, B, T+1), one batch at a time, without dropout.

  One call for all E batches: one dispatch and one wait instead of E of each.
  """
  return jax.lax.map(lambda batch: loss_fn(params, model, batch), windows)


# Compiler options for programs that run once (init). On CPU, LLVM's optimisations cost most of
# init's compile and buy nothing for one run (docs/performance.md). GPU and TPU compilers keep
# their defaults.
_RUN_ONCE_OPTIONS = {"cpu": {"xla_backend_optimization_level": 0}}


@dataclasses.dataclass
class Setup:
  """Everything compiled for one config on one mesh."""
  model: GPT
  tx: optax.GradientTransformation
  mesh: jax.sharding.Mesh
  abstract_state: TrainState  # ShapeDtypeStructs carrying their target shardings
  init: Callable  # rng -> TrainState, born sharded
  train_step: Callable  # (state, windows) -> (state, metrics), state donated
  eval_step: Callable  # (params, windows (E, B, T+1)) -> (E,) losses


def mesh_platform(mesh: jax.sharding.Mesh) -> str:
  """"cpu", "gpu" or "tpu": what the mesh's devices are (compile-only devices included)."""
  return platform_of(mesh.devices.flat[0])


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Setup:
  """Model, optimizer, state shardings from the logical-axis rules, and the jitted functions.

  Everything platform-dependent (attention kernel, dropout's random bits, compiler options) is
  decided for the mesh's devices, which need not be this machine's (gptjax/planner compiles for
  TPUs and GPUs it does not have).
  """
  platform = mesh_platform(mesh)
  model = GPT(ModelConfig.from_config(config).for_platform(platform))
  attention.prepare(model.config, mesh)  # Pallas kernels built here, outside jit and the mesh

  def init_params(rng):  # params keep their logical-axis boxes, so eval_shape shows the names
    return model.init(rng, jnp.zeros((1, config.block_size), jnp.int32))["params"]

  boxed_params = jax.eval_shape(init_params, jax.random.key(0))
  # Muon picks its matrices by the parameters' logical axis names.
  tx = make_optimizer(config, nn.get_partition_spec(boxed_params))

  boxed = lambda x: isinstance(x, nn.Partitioned)  # unboxed without a constraint: under any mesh
  abstract_params = jax.tree.map(lambda x: x.value if boxed(x) else x, boxed_params, is_leaf=boxed)
  abstract_opt_state = jax.eval_shape(tx.init, abstract_params)
  param_shardings = sharding.logical_shardings(boxed_params, mesh)
  state_shardings = TrainState(step=sharding.replicated(mesh),
                               params=param_shardings,
                               opt_state=sharding.optimizer_shardings(tx, abstract_opt_state,
                                                                      param_shardings, mesh))
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32),
                        params=abstract_params,
                        opt_state=abstract_opt_state)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                          state_shardings)

  def init(rng):
    # Scanned layers start from the unrolled model's values, stacked: the run, whatever its layout.
    unrolled = GPT(dataclasses.replace(model.config, scan_layers=False))
    params = unrolled.init(rng, jnp.zeros((1, config.block_size), jnp.int32))["params"]
    params = to_layout(nn.meta.unbox(params), scan_layers=model.config.scan_layers)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  batch = sharding.batch_sharding(mesh)
  step_fn = functools.partial(train_step,
                              model=model,
                              tx=tx,
                              schedule=learning_rate_schedule(config),
                              seed=config.seed,
                              dropout_rng=config_module.resolve_dropout_rng(config, platform),
                              flat_all_reduce_mesh=mesh if config.dropout == 0 and
                              sharding.is_replicated_data_parallel(mesh) else None,
                              z_loss=config.z_loss)
  return Setup(model=model,
               tx=tx,
               mesh=mesh,
               abstract_state=abstract,
               init=jax.jit(init,
                            out_shardings=state_shardings,
                            compiler_options=_RUN_ONCE_OPTIONS.get(platform)),
               train_step=jax.jit(step_fn,
                                  in_shardings=(state_shardings, batch),
                                  out_shardings=(state_shardings, sharding.replicated(mesh)),
                                  donate_argnums=0),
               eval_step=jax.jit(functools.partial(eval_step, model=model),
                                 in_shardings=(param_shardings, batch),
                                 out_shardings=sharding.replicated(mesh)))


@contextlib.contextmanager
def mesh_context(mesh: jax.sharding.Mesh):
  """The mesh and logical-axis rules that the model's activation constraints resolve against."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_AXIS_RULES):
    yield


def global_batch(windows: np.ndarray, mesh: jax.sharding.Mesh, global_rows: int) -> jax.Array:
  """This process's rows of the batch -> one global jax.Array sharded over data x fsdp."""
  shape = (windows.shape[0], global_rows, windows.shape[2])
  return jax.make_array_from_process_local_data(sharding.batch_sharding(mesh), windows, shape)


def abstract_batch(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
  """The (A, B, T+1) token batch train_step takes, as a ShapeDtypeStruct (nothing allocated)."""
  shape = (config.grad_accum_steps, config.batch_size, config.block_size + 1)
  return jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding.batch_sharding(mesh))


def compile_train_step(setup: Setup, config: ml_collections.ConfigDict):
  """The train step compiled ahead of time for the setup's mesh: what the loop calls, and what
  the planner's memory check reads (before any state exists)."""
  with mesh_context(setup.mesh):
    return setup.train_step.lower(setup.abstract_state, abstract_batch(config,
                                                                       setup.mesh)).compile()
