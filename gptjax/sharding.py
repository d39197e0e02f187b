"""The device mesh, the logical-axis rules, and the shardings of state and batch.

One code path for every machine: a single CPU is a (1, 1, 1) mesh. The model names its parameter and
activation axes logically (gptjax/model.py); LOGICAL_AXIS_RULES maps them onto the mesh axes:

  data    pure data parallelism: replicas of the parameters, each on its own slice of the batch
  fsdp    fully sharded data parallelism: the batch is split here too, and parameters and optimizer
          state are sharded along `embed` (all-gathered per layer in the step)
  tensor  tensor parallelism: attention heads, MLP hidden units and the vocabulary are split

Flax resolves a logical axis to the first rule whose mesh axis is still free in that array, so the
same table shards a parameter (vocab, embed) as (tensor, fsdp) and an activation (batch, embed) as
((data, fsdp), None): FSDP shards weights, never the activations' channels.
"""

from __future__ import annotations

import math
import os
from typing import Callable

import flax.linen as nn
import jax
import jax.flatten_util
import ml_collections
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from gptjax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
HEAD_AXIS = "tensor"  # where "heads" goes (fused attention's shard_map splits them there)

LOGICAL_AXIS_RULES = (
    ("batch", BATCH_AXES),
    ("vocab", "tensor"),
    ("heads", HEAD_AXIS),
    ("mlp", "tensor"),
    ("embed", "fsdp"),
    ("kv", None),
    ("length", None),
    ("layers", None),  # scan_layers' stacked axis: every device holds every layer's slice
)


def use_cpu_devices(count: int) -> None:
  """Splits the host CPU into `count` devices; must run before JAX initialises its backends."""
  if count <= 1:
    return
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError as e:
    if len(jax.devices("cpu")) != count:
      raise ConfigError(
          f"config field 'cpu_devices': {count} CPU devices were asked for after JAX had started "
          f"with {len(jax.devices('cpu'))}. Fix: set it in a fresh process (`python -m "
          f"gptjax.train` does), or set XLA_FLAGS=--xla_force_host_platform_device_count={count}."
      ) from e


def mesh_shape(config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) sizes for `num_devices`, with a -1 entry taking the remaining devices."""
  sizes = [config.mesh.data, config.mesh.fsdp, config.mesh.tensor]
  fixed = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % fixed:
      raise ConfigError(
          f"config field 'mesh': data={sizes[0]}, fsdp={sizes[1]}, tensor={sizes[2]} cannot fill "
          f"{num_devices} devices ({num_devices} is not a multiple of {fixed}). Fix: sizes whose "
          f"product divides {num_devices}, e.g. --config.mesh.data=1 --config.mesh.fsdp=-1 "
          f"--config.mesh.tensor=1.")
    sizes[sizes.index(-1)] = num_devices // fixed
  if math.prod(sizes) != num_devices:
    raise ConfigError(
        f"config field 'mesh': data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = "
        f"{math.prod(sizes)} devices, but {num_devices} are present. Fix: e.g. "
        f"--config.mesh.data=1 --config.mesh.fsdp=-1 --config.mesh.tensor=1 (sizes whose "
        f"product is {num_devices}, or with one -1: all remaining devices).")
  return tuple(sizes)


def make_mesh(config: ml_collections.ConfigDict, devices=None) -> jax.sharding.Mesh:
  """The (data, fsdp, tensor) mesh over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(config, len(devices))
  validate_for_mesh(config, shape)
  axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)


def validate_for_mesh(config: ml_collections.ConfigDict, shape: tuple[int, int, int]) -> None:
  """The divisibility rules that depend on the mesh: batch over data*fsdp, heads/vocab over tensor."""
  data, fsdp, tensor = shape
  if config.batch_size % (data * fsdp):
    raise ConfigError(
        f"config field 'batch_size': {config.batch_size} is not divisible by mesh data x fsdp = "
        f"{data * fsdp}, over which the global batch is split. Fix: use a multiple of "
        f"{data * fsdp}, e.g. --config.batch_size={max(1, config.batch_size // (data * fsdp)) * data * fsdp}."
    )
  for field in ("n_head", "vocab_size"):
    if config[field] % tensor:
      raise ConfigError(
          f"config field '{field}': {config[field]} is not divisible by mesh.tensor={tensor}, "
          f"which splits it. Fix: a mesh.tensor that divides it, e.g. --config.mesh.tensor=1" +
          (f", or a vocab_size padded to a multiple of it, --config.vocab_size="
           f"{-(-config[field] // tensor) * tensor}." if field == "vocab_size" else "."))


def logical_shardings(abstract_tree, mesh: jax.sharding.Mesh):
  """NamedShardings for a pytree whose leaves are boxed with logical names (others: replicated)."""
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_AXIS_RULES)


def optimizer_shardings(tx: optax.GradientTransformation, abstract_opt_state, param_shardings,
                        mesh: jax.sharding.Mesh):
  """Shards every parameter-shaped optimizer leaf (AdamW's moments, Muon's momentum) like its
  parameter, and replicates the rest (step counts).

  An optimizer leaf belongs to the parameter whose key path ends its own (optax keeps each moment
  as a tree shaped like the params, within partitions and masks whose other leaves are
  optax.MaskedNode()s: optax.tree_map_params does not see through those).
  """
  del tx  # the key paths say it all
  by_path = {
      tuple(path): spec for path, spec in jax.tree_util.tree_leaves_with_path(
          param_shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  }
  lengths = sorted({len(path) for path in by_path}, reverse=True)
  replicated = NamedSharding(mesh, P())

  def leaf_sharding(path, _):
    for length in lengths:
      if len(path) >= length and tuple(path[-length:]) in by_path:
        return by_path[tuple(path[-length:])]
    return replicated

  return jax.tree_util.tree_map_with_path(leaf_sharding, abstract_opt_state)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Sharding of a (micro_batches, B, T) token batch: B split over data x fsdp."""
  return NamedSharding(mesh, P(None, BATCH_AXES, None))


def is_replicated_data_parallel(mesh: jax.sharding.Mesh) -> bool:
  """True when the mesh only splits the batch (fsdp = tensor = 1): every device holds all params."""
  return mesh.shape["fsdp"] == 1 and mesh.shape["tensor"] == 1 and mesh.shape["data"] > 1


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def process_batch_rows(mesh: jax.sharding.Mesh, global_batch: int) -> slice:
  """The rows of the global batch this process feeds (each process loads only its own rows).

  With the batch split over data x fsdp and devices of one process adjacent in the mesh (as
  jax.make_mesh arranges them), every process owns one contiguous block of rows.
  """
  sharding = batch_sharding(mesh)
  indices = sharding.addressable_devices_indices_map((1, global_batch, 1))
  rows = sorted({(idx[1].start or 0, idx[1].stop or global_batch) for idx in indices.values()})
  start, stop = rows[0][0], rows[-1][1]
  if sum(b - a for a, b in rows) != stop - start:  # Never expected with make_mesh's device order.
    raise RuntimeError(f"process {jax.process_index()} owns non-contiguous batch rows {rows}")
  return slice(start, stop)


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """Starts jax.distributed when running as one of several processes.

  Explicit settings come from config.distributed (coordinator_address, num_processes, process_id)
  or the environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); otherwise
  jax.distributed.initialize() auto-detects TPU pods, SLURM and other cluster environments.
  Single-process runs with neither skip it.
  """
  settings = config.distributed
  address = settings.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
  if address:
    num_processes = settings.num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "0"))
    process_id = (settings.process_id if settings.process_id >= 0 else int(
        os.environ.get("JAX_PROCESS_ID", "-1")))
    if num_processes <= 0 or process_id < 0:
      raise ConfigError(
          f"distributed: coordinator_address={address!r} needs num_processes and process_id. "
          f"Fix: set --config.distributed.num_processes and --config.distributed.process_id "
          f"(or JAX_NUM_PROCESSES / JAX_PROCESS_ID).")
    jax.distributed.initialize(address, num_processes=num_processes, process_id=process_id)
  elif _in_cluster_environment():
    jax.distributed.initialize()


def _in_cluster_environment() -> bool:
  """True under a multi-task SLURM job or on a multi-host TPU slice, where JAX auto-detects peers."""
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return "," in hosts


def flat_all_reduce(loss_and_grads: Callable, mesh: jax.sharding.Mesh) -> Callable:
  """`loss_and_grads` per device on its rows, then one all-reduce of all gradients as one buffer.

  For pure data parallelism (params replicated). XLA's partitioner all-reduces each weight's
  gradient and combines them into one all-reduce of a tuple of buffers, which on CPU devices is
  several times slower than the same floats in one buffer (docs/performance.md; PyTorch DDP
  buckets its gradients for the same reason). Each device runs the model on its own
  rows, so dropout masks would differ from the unsharded step's: used only without dropout.
  """

  def per_device(params, windows, rng):
    with nn.logical_axis_rules(()):  # the batch is already split: no activation constraints
      loss, grads = loss_and_grads(params, windows, rng)
    flat, unflatten = jax.flatten_util.ravel_pytree(grads)
    loss, flat = jax.lax.pmean((loss, flat), BATCH_AXES)
    return loss, unflatten(flat)

  return jax.shard_map(per_device,
                       mesh=mesh,
                       check_vma=False,
                       in_specs=(P(), batch_sharding(mesh).spec, P()),
                       out_specs=(P(), P()))
