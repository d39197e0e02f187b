"""--search: the fastest settings that fit a target with memory to spare, and the fewest changes
that make a config fit (what the trainer's out-of-memory messages suggest).

Candidates are every mesh x micro-batch/accumulation x remat policy x dtype x loss (plain or in
chunks of tokens) that keeps the config's tokens per step (attention is the config's, "auto" the
device's fastest kernel; scan_layers, a layout, is left as it is). Each is estimated analytically
(milliseconds); then, where the target compiles, the fastest few that fit are compiled and their
figures replace the analytic ones.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import ml_collections

from gptjax.errors import ConfigError
from gptjax import sharding
from gptjax.planner import estimate as estimate_lib
from gptjax.planner import targets
from gptjax.planner.compiled import fast_is_exact
from gptjax.planner.estimate import Estimate
from gptjax.planner.options import REMAT_POLICIES, REQUIRED_HEADROOM
from gptjax.units import gib

MAX_TENSOR_PARALLEL = 8  # tensor parallelism beyond one host's fast links rarely pays
LOSS_CHUNK_TOKENS = 4096  # the chunked loss it tries beside the plain one (loss_chunk_tokens)


@dataclasses.dataclass
class Candidate:
  config: ml_collections.ConfigDict
  estimate: Estimate
  changes: int  # settings that differ from the config searched from


def candidates(config: ml_collections.ConfigDict,
               target: targets.Target) -> tuple[list[ml_collections.ConfigDict], list[str]]:
  """Every mesh x micro-batch/accumulation x remat policy x dtype x loss chunking that keeps the
  config's tokens per step, and one line per kind of setting left out."""
  sequences = config.batch_size * config.grad_accum_steps
  devices = target.num_devices
  meshes, skipped = [], []
  for tensor in _divisors(devices):
    if tensor > MAX_TENSOR_PARALLEL or config.n_head % tensor or config.vocab_size % tensor:
      if tensor > 1:
        skipped.append(f"tensor={tensor}: more than {MAX_TENSOR_PARALLEL} or does not divide "
                       f"n_head={config.n_head} and vocab_size={config.vocab_size}")
      continue
    meshes += [(data, devices // tensor // data, tensor) for data in _divisors(devices // tensor)]
  result = []
  loss_chunks = sorted({0, config.loss_chunk_tokens or LOSS_CHUNK_TOKENS})
  for (data, fsdp, tensor), accumulate in itertools.product(meshes, _divisors(sequences)):
    micro_batch = sequences // accumulate
    if micro_batch % (data * fsdp):
      continue
    for dtype, remat, chunk in itertools.product(("float32", "bfloat16"), REMAT_POLICIES,
                                                 loss_chunks):
      candidate = ml_collections.ConfigDict(config.to_dict())
      candidate.update(
          dict(batch_size=micro_batch,
               grad_accum_steps=accumulate,
               dtype=dtype,
               remat=remat,
               loss_chunk_tokens=chunk))
      candidate.mesh.update(dict(data=data, fsdp=fsdp, tensor=tensor))
      result.append(candidate)
  if not result:
    skipped.append(f"no mesh of {devices} devices splits {sequences} sequences a step")
  return result, skipped


def search(config: ml_collections.ConfigDict,
           target: targets.Target,
           *,
           verify: int = 3,
           fast: bool = True,
           log=lambda line: None) -> tuple[list[Candidate], list[str]]:
  """The configurations that fit with REQUIRED_HEADROOM, fastest first, and why others did not.

  Every candidate is estimated analytically (milliseconds each); then, where the target compiles,
  the `verify` fastest that fit are compiled (per-layer extrapolation with `fast`), and their
  compiled memory and time replace the analytic ones.
  """
  configs, rejected = candidates(config, target)
  base = resolved_settings(config, target)
  ranked, too_big = [], []
  for candidate in configs:
    result = estimate_lib.estimate(candidate, target, method=estimate_lib.ANALYTIC)
    entry = Candidate(candidate, result, _changes(base, result.settings))
    (ranked if result.headroom >= REQUIRED_HEADROOM else too_big).append(entry)
  ranked.sort(key=_speed_order)
  verified = []
  fast = fast and fast_is_exact(target)
  for entry in ranked[:verify]:
    log(f"compiling {format_overrides(entry.estimate.settings, config) or 'the config as given'}")
    try:
      compiled = estimate_lib.estimate(entry.config, target, method="compile", fast=fast)
    except targets.CompileOnlyUnavailable as e:
      rejected.append(f"not compiled, analytic figures only: {e}")
      break
    if compiled.headroom >= REQUIRED_HEADROOM:
      verified.append(Candidate(entry.config, compiled, entry.changes))
    else:
      too_big.append(Candidate(entry.config, compiled, entry.changes))
  verified.sort(key=_speed_order)
  unverified = [
      entry for entry in ranked
      if not any(entry.config is v.config for v in verified) and not any(entry.config is t.config
                                                                         for t in too_big)
  ]
  if too_big:
    smallest = min(too_big, key=lambda c: c.estimate.memory.total)
    rejected.insert(
        0, f"{len(too_big)} settings need more than {100 - 100 * REQUIRED_HEADROOM:.0f}% "
        f"of the device's {gib(target.device_memory_bytes)}; the smallest of them, "
        f"{format_overrides(smallest.estimate.settings, config) or 'as given'}, "
        f"needs {gib(smallest.estimate.memory.total)} ({smallest.estimate.method})")
  return verified + unverified, rejected


def resolved_settings(config: ml_collections.ConfigDict, target: targets.Target) -> dict[str, Any]:
  """The config's planned settings with a -1 mesh entry resolved for the target's devices."""
  settings = estimate_lib.planned_settings(config)
  try:
    shape = sharding.mesh_shape(config, target.num_devices)
  except ConfigError:
    return settings
  return {**settings, "mesh": dict(zip(sharding.MESH_AXES, shape))}


def _speed_order(candidate: Candidate):
  return (candidate.estimate.step_seconds or math.inf, candidate.changes)


def _changes(base: dict[str, Any], settings: dict[str, Any]) -> int:
  flat = lambda d: {**{k: v for k, v in d.items() if k != "mesh"}, **d["mesh"]}  # noqa: E731
  a, b = flat(base), flat(settings)
  return sum(a[k] != b[k] for k in a)


def _divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


def fewest_changes_that_fit(config: ml_collections.ConfigDict,
                            target: targets.Target,
                            compile: bool,
                            tries: int = 3) -> tuple["Candidate", int] | None:
  """The analytic search's fitting settings with the fewest changes (then the fastest) and their
  bytes per device; with `compile`, the first of the `tries` best whose compiled step (per-layer
  extrapolated) also keeps REQUIRED_HEADROOM free."""
  fitting, _ = search(config, target, verify=0)
  fitting.sort(key=lambda c: (c.changes, _speed_order(c)))
  for candidate in fitting[:tries if compile else 1]:
    total = candidate.estimate.memory.total
    if compile:
      total = estimate_lib.estimate(candidate.config,
                                    target,
                                    method="compile",
                                    fast=fast_is_exact(target)).memory.total
    if total <= (1 - REQUIRED_HEADROOM) * target.device_memory_bytes:
      return candidate, total
  return None


def format_overrides(settings: dict[str, Any], config: ml_collections.ConfigDict) -> str:
  """`--config.k=v` for every planned setting that differs from `config` (a mesh that only
  spells out what the config's -1 entry resolves to is left as it is)."""
  parts = []
  for key, value in settings.items():
    if key == "mesh":
      devices = math.prod(value.values())
      try:
        current = dict(zip(sharding.MESH_AXES, sharding.mesh_shape(config, devices)))
      except ConfigError:
        current = dict(config.mesh)
      if current != value:
        parts += [
            f"--config.mesh.{axis}={size}" for axis, size in value.items()
            if config.mesh[axis] != size
        ]
    elif config[key] != value:
      parts.append(f"--config.{key}={value}")
  return " ".join(parts)
