"""The machines gptjax can plan for: this machine's devices, TPU slices and NVIDIA GPUs by name.

A target is a chip and a count. Its devices are the local ones (`local`), or compile-only devices
that need no accelerator: TPU slices through libtpu's compile-only topologies, NVIDIA GPUs through
XLA's deviceless GPU compiler given a description of the card (jax's CUDA plugin must be
installed; no GPU or CUDA driver is needed). Where neither library is installed, the planner falls
back to the analytic model (gptjax/params.py).

  tpu-v5e-1, tpu-v5e-8, ..., tpu-v6e-256   TPU v5e / v6e slices by chip count (v5litepod-N, v6e-N)
  tpu-v4-8, tpu-v5p-8, ...                 TPU v4 / v5p by TensorCore count (2 per chip), as Cloud
  gpu-h100-80gb, 8xgpu-h100-80gb, ...      NVIDIA GPUs, N of them on one host (up to 8 per host)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re

import jax

from gptjax import devices as devices_lib
from gptjax.devices import DEVICE_MEMORY_ENV, GPUS, TPU_CHIPS, Chip
from gptjax.errors import ConfigError
from gptjax.units import GiB

# TPU generation -> (topology name prefix, devices per Cloud name unit, chip config).
_TPU_NAMING = {
    "v4": ("v4", 2, "megacore"),
    "v5p": ("v5p", 2, None),
    "v5e": ("v5e", 1, None),
    "v6e": ("v6e", 1, None)
}
_TPU_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_TPU_3D = {
    1: "1x1x1",
    4: "2x2x1",
    8: "2x2x2",
    16: "2x2x4",
    32: "2x4x4",
    64: "4x4x4",
    128: "4x4x8",
    256: "4x8x8",
    512: "8x8x8"
}

GPUS_PER_HOST = 8
# The GPUs XLA's deviceless compiler can be told about (the table's cards with a GpuSpec).
PLANNABLE_GPUS = {key: chip for key, chip in GPUS.items() if chip.gpu is not None}

# The targets the presets' memory table and the README list.
COMMON_TARGETS = ("gpu-rtx4090-24gb", "gpu-a100-40gb", "gpu-h100-80gb", "tpu-v5e-1", "tpu-v5e-8",
                  "tpu-v4-8")


@dataclasses.dataclass(frozen=True)
class Target:
  """`num_devices` of `chip`, named as on the command line."""
  name: str
  chip: Chip
  num_devices: int
  topology: str = ""  # TPU: "v5e:2x4"; GPU: "1x1x8" (partitions x hosts x devices)

  @property
  def platform(self) -> str:
    return self.chip.platform

  @property
  def device_memory_bytes(self) -> int:
    """What one device offers a program (GPUs: the allocator's share of the card)."""
    if self.platform == "gpu":
      return int(self.chip.memory_bytes * devices_lib.gpu_memory_fraction())
    return self.chip.memory_bytes

  def peak_flops_for(self, dtype: str) -> float:
    return self.chip.peak_flops_fp32 if dtype == "float32" else self.chip.peak_flops


def parse_target(name: str) -> Target:
  """`local`, `tpu-v5e-8`, `gpu-h100-80gb` or `8xgpu-h100-80gb` -> Target.

  Raises:
    ConfigError: an unknown or malformed name, with the valid forms.
  """
  if name == "local":
    return local_target()
  tpu = re.fullmatch(r"tpu-(v4|v5e|v5p|v6e)-(\d+)", name)
  if tpu:
    generation, count = tpu.group(1), int(tpu.group(2))
    prefix, per_chip, _ = _TPU_NAMING[generation]
    chips, rest = divmod(count, per_chip)
    shapes = _TPU_3D if generation in ("v4", "v5p") else _TPU_2D
    if rest or chips not in shapes:
      sizes = ", ".join(f"tpu-{generation}-{c * per_chip}" for c in shapes)
      raise ConfigError(f"--target={name}: no TPU {generation} slice of that size. Fix: one of "
                        f"{sizes}.")
    return Target(name, TPU_CHIPS[generation], chips, f"{prefix}:{shapes[chips]}")
  gpu = re.fullmatch(r"(?:(\d+)x)?gpu-([a-z0-9]+-\d+gb)", name)
  if gpu and gpu.group(2) in PLANNABLE_GPUS:
    count = int(gpu.group(1) or 1)
    hosts = max(1, math.ceil(count / GPUS_PER_HOST))
    if count < 1 or (count > GPUS_PER_HOST and count % GPUS_PER_HOST):
      raise ConfigError(f"--target={name}: {count} GPUs. Fix: 1 to {GPUS_PER_HOST} GPUs, or a "
                        f"multiple of {GPUS_PER_HOST} (whole hosts).")
    return Target(name, PLANNABLE_GPUS[gpu.group(2)], count, f"1x{hosts}x{count // hosts}")
  raise ConfigError(
      f"--target={name!r} is not a target. Fix: local; a TPU slice tpu-v5e-1, tpu-v5e-8, tpu-v4-8, "
      f"tpu-v5p-8, tpu-v6e-8 (any Cloud size); or GPUs " +
      ", ".join(f"gpu-{g}" for g in PLANNABLE_GPUS) +
      " with an optional count, e.g. 8xgpu-h100-80gb.")


def deviceless_name(device_kind: str, platform: str, count: int) -> str | None:
  """The compile-only target of `count` devices of this kind (`gpu-h100-80gb`, `tpu-v5e-8`): what
  a plan made without the hardware calls the devices at hand; None for CPUs and unknown chips."""
  chip = devices_lib.known_chip(device_kind)
  if chip is None or platform not in ("gpu", "tpu"):
    return None
  if platform == "gpu":
    names = [key for key, known in PLANNABLE_GPUS.items() if known.name == chip.name]
    return (f"{count}xgpu-{names[0]}" if count > 1 else f"gpu-{names[0]}") if names else None
  for generation, (_, per_chip, _) in _TPU_NAMING.items():
    if TPU_CHIPS[generation].name == chip.name:
      return f"tpu-{generation}-{count * per_chip}"
  return None


def local_target() -> Target:
  """This process's devices (all processes' in a multi-host run), as `local`."""
  device = jax.devices()[0]
  platform = devices_lib.platform_of(device)
  known = devices_lib.known_chip(device.device_kind)
  limit = _memory_stats(device).get("bytes_limit")
  if os.environ.get(DEVICE_MEMORY_ENV):
    memory, note = int(float(os.environ[DEVICE_MEMORY_ENV]) * GiB), f"${DEVICE_MEMORY_ENV}"
  elif limit:
    memory, note = int(limit), "the device allocator's limit"
  elif platform == "cpu":
    memory = devices_lib.host_memory_bytes() // jax.local_device_count()
    note = "this host's RAM, shared by its CPU devices"
  else:
    memory, note = (known.memory_bytes if known else 0), "the chip's datasheet"
  if known:
    chip = dataclasses.replace(known, memory_bytes=memory, memory_note=note)
  else:
    chip = Chip(device.device_kind, platform, memory, 0.0, 0.0, 0.0, memory_note=note)
  return Target("local", chip, jax.device_count())


def _memory_stats(device) -> dict:
  try:
    return device.memory_stats() or {}
  except Exception:  # CPU devices and compile-only devices have none
    return {}


def compile_only_process() -> None:
  """Keeps this process's JAX on the CPU (unless $JAX_PLATFORMS says otherwise): it compiles for
  TPUs and GPUs it does not have, and must not start (or fail to start) their runtimes."""
  if not os.environ.get("JAX_PLATFORMS"):
    jax.config.update("jax_platforms", "cpu")


class CompileOnlyUnavailable(Exception):
  """The library that compiles for this target without the hardware is not installed."""


def devices(target: Target) -> list:
  """The devices to compile for: local ones, or compile-only TPU / GPU devices.

  Raises:
    CompileOnlyUnavailable: libtpu (TPU) or jax's CUDA plugin (GPU) is missing.
  """
  if target.name == "local":
    return jax.devices()
  return list(_topology(target).devices)


@functools.lru_cache(maxsize=None)
def _topology(target: Target):
  from jax.experimental import topologies
  if target.platform == "tpu":
    devices_lib.add_libtpu_flags()
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server off a TPU VM
    # libtpu lets one process at a time load it (a lock file); compiling touches no TPU, so
    # planners may run side by side, and beside a training run on a TPU VM.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    generation = target.topology.split(":")[0]
    chip_config = _TPU_NAMING[generation][2]
    kwargs = {"chip_config_name": chip_config} if chip_config else {}
    if target.num_devices == 1:
      kwargs["chips_per_host_bounds"] = (1, 1, 1)
    try:
      with devices_lib.quiet_plugins():
        return topologies.get_topology_desc(topology_name=target.topology, platform="tpu", **kwargs)
    except Exception as e:  # libtpu absent, or another process holds it
      raise CompileOnlyUnavailable(f"TPU compilation without a TPU needs libtpu "
                                   f"(pip install \"gptjax[tpu]\"): {_first_line(e)}") from e
  try:
    with devices_lib.quiet_plugins():
      return topologies.get_topology_desc(topology_name=target.chip.name,
                                          platform="cuda",
                                          topology=target.topology,
                                          target_config=gpu_target_config(target.chip))
  except Exception as e:
    raise CompileOnlyUnavailable(f"GPU compilation without a GPU needs jax's CUDA plugin "
                                 f"(pip install \"gptjax[gpu-plan]\"): {_first_line(e)}") from e


def _first_line(error: Exception) -> str:
  return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def gpu_target_config(chip: Chip) -> str:
  """XLA's GpuTargetConfig (text proto) for `chip`: what its deviceless GPU compiler needs."""
  spec = chip.gpu
  major, minor = spec.compute_capability
  return f"""gpu_device_info {{
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_block_optin: {spec.shared_memory_per_sm - 1024}
  shared_memory_per_core: {spec.shared_memory_per_sm}
  threads_per_core_limit: {spec.threads_per_sm}
  core_count: {spec.sm_count}
  fpus_per_core: {spec.fp32_lanes_per_sm}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(chip.memory_bandwidth)}
  l2_cache_size: {spec.l2_bytes}
  clock_rate_ghz: {spec.clock_ghz}
  device_memory_size: {chip.memory_bytes}
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 patch: 0 }}
device_description_str: "{chip.name}"
"""
