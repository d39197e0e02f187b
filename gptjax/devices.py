"""The chips gptjax knows (one table: memory, bandwidth, peak FLOP/s) and how JAX starts on them.

  known_chip(jax.devices()[0].device_kind)  -> Chip or None (CPUs, unknown cards)
  peak_flops(device), mfu(...)               what training reports as MFU
  accelerator_hardware()                     "gpu" | "tpu" | None: what this machine has, whatever
                                             JAX's plugins make of it
  start_jax()                                imports JAX on the right platforms, quietly

Every figure is a vendor datasheet's: dense bf16/fp16 matmul peaks (GPUs without sparsity), HBM as
XLA or nvidia-smi reports it, NVLink (one direction) or PCIe 4.0 x16 between GPUs, ICI for TPUs.
No JAX at import: this module decides how JAX starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import threading

from gptjax.units import GiB

# Fraction of a GPU's memory that JAX's allocator may use. JAX's own default is 0.75; gptjax's
# commands raise it to 0.90 (start_jax), and a set XLA_PYTHON_CLIENT_MEM_FRACTION wins over both.
GPTJAX_GPU_MEMORY_FRACTION = 0.90
# Pretends the local devices hold this many GiB each: the trainer's memory check then applies on
# CPUs too (tests use it; so can anyone checking a config against a smaller card).
DEVICE_MEMORY_ENV = "GPTJAX_DEVICE_MEMORY_GB"
# Flags libtpu must see before it loads. The SPMD partitioner then generates each device's slice
# of the dropout random bits instead of the whole batch's (MaxText sets the same flag).
LIBTPU_FLAGS = ("--xla_tpu_spmd_rng_bit_generator_unsafe=true",)


@dataclasses.dataclass(frozen=True)
class GpuSpec:
  """The fields of XLA's GpuTargetConfig that differ between cards (NVIDIA's datasheets)."""
  compute_capability: tuple[int, int]
  sm_count: int
  fp32_lanes_per_sm: int
  shared_memory_per_sm: int
  threads_per_sm: int
  l2_bytes: int
  clock_ghz: float


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator: what it holds and how fast it computes and reads memory."""
  name: str
  platform: str  # "tpu", "gpu" or "cpu"
  memory_bytes: int  # memory a program may use on one device
  peak_flops: float  # dense bf16 matmul FLOP/s
  peak_flops_fp32: float  # float32 matmuls as XLA runs them (TPU: bf16 passes; GPU: TF32)
  memory_bandwidth: float  # bytes/s
  link_bandwidth: float = 0.0  # bytes/s one device sends to its neighbours (TPU ICI, NVLink, PCIe)
  memory_note: str = ""  # how memory_bytes was arrived at
  gpu: GpuSpec | None = None  # what XLA's deviceless GPU compiler needs to know of the card


_HOPPER = GpuSpec((9, 0), 132, 128, 233472, 2048, 50 * 2**20, 1.98)
_A100 = GpuSpec((8, 0), 108, 64, 167936, 2048, 40 * 2**20, 1.41)
_ADA = dict(shared_memory_per_sm=102400, threads_per_sm=1536)

# TPU HBM as XLA reports it on a real chip: Colab's v5e shows 15.75 GiB of 16; the others are taken
# as their HBM less the same 0.25 GiB. Per chip (v4 and v5p chips have two TensorCores).
TPU_CHIPS = {
    "v2": Chip("TPU v2", "tpu", 16 * GiB - GiB // 4, 45e12, 45e12, 700e9, 62e9, "16 GiB HBM"),
    "v3": Chip("TPU v3", "tpu", 32 * GiB - GiB // 4, 123e12, 123e12, 900e9, 82e9, "32 GiB HBM"),
    "v4": Chip("TPU v4", "tpu", 32 * GiB - GiB // 4, 275e12, 275e12, 1228e9, 300e9, "32 GiB HBM"),
    "v5e": Chip("TPU v5e", "tpu", 16 * GiB - GiB // 4, 197e12, 197e12, 819e9, 200e9, "16 GiB HBM"),
    "v5p": Chip("TPU v5p", "tpu", 95 * GiB - GiB // 4, 459e12, 459e12, 2765e9, 600e9, "95 GiB HBM"),
    "v6e": Chip("TPU v6e", "tpu", 32 * GiB - GiB // 4, 918e12, 918e12, 1640e9, 448e9, "32 GiB HBM"),
}
# NVIDIA GPUs: memory as nvidia-smi shows it. Those with a GpuSpec can be planned for without the
# card (XLA's deviceless compiler); the others are known for MFU and the local planner.
GPUS = {
    "b200-180gb":
        Chip("NVIDIA B200", "gpu", 183359 * 2**20, 2250e12, 1125e12, 8000e9, 900e9),
    "h200-141gb":
        Chip("NVIDIA H200", "gpu", 143771 * 2**20, 989e12, 494e12, 4800e9, 450e9, gpu=_HOPPER),
    "h100-80gb":
        Chip("NVIDIA H100 80GB", "gpu", 81559 * 2**20, 989e12, 494e12, 3352e9, 450e9, gpu=_HOPPER),
    "a100-80gb":
        Chip("NVIDIA A100 80GB", "gpu", 81920 * 2**20, 312e12, 156e12, 2039e9, 300e9, gpu=_A100),
    "a100-40gb":
        Chip("NVIDIA A100 40GB", "gpu", 40960 * 2**20, 312e12, 156e12, 1555e9, 300e9, gpu=_A100),
    "l40s-48gb":
        Chip("NVIDIA L40S", "gpu", 46068 * 2**20, 362e12, 183e12, 864e9, 32e9),
    "a10-24gb":
        Chip("NVIDIA A10", "gpu", 23028 * 2**20, 125e12, 62.5e12, 600e9, 32e9),
    "l4-24gb":
        Chip("NVIDIA L4",
             "gpu",
             23034 * 2**20,
             121e12,
             60e12,
             300e9,
             32e9,
             gpu=GpuSpec((8, 9), 58, 128, l2_bytes=48 * 2**20, clock_ghz=2.04, **_ADA)),
    "rtx4090-24gb":
        Chip("NVIDIA GeForce RTX 4090",
             "gpu",
             24564 * 2**20,
             165e12,
             82.6e12,
             1008e9,
             32e9,
             gpu=GpuSpec((8, 9), 128, 128, l2_bytes=72 * 2**20, clock_ghz=2.52, **_ADA)),
    "rtx3090-24gb":
        Chip("NVIDIA GeForce RTX 3090", "gpu", 24268 * 2**20, 71e12, 35.6e12, 936e9, 32e9),
    "v100-32gb":
        Chip("NVIDIA V100", "gpu", 32510 * 2**20, 125e12, 15.7e12, 900e9, 150e9),
    "t4-16gb":
        Chip("NVIDIA T4", "gpu", 15360 * 2**20, 65e12, 8.1e12, 320e9, 16e9),
}
# jax's device_kind -> the chip, matched as lower-case substrings, most specific first.
_DEVICE_KINDS = (("tpu v5 lite", "v5e"), ("tpu v5e", "v5e"), ("tpu v6 lite", "v6e"),
                 ("tpu v6e", "v6e"), ("tpu v5", "v5p"), ("tpu v4", "v4"), ("tpu v3", "v3"),
                 ("tpu v2", "v2"), ("b200", "b200-180gb"), ("gh200", "h100-80gb"),
                 ("h200", "h200-141gb"), ("h100", "h100-80gb"), ("a100-sxm4-80gb", "a100-80gb"),
                 ("a100 80gb", "a100-80gb"), ("a100", "a100-40gb"), ("l40s", "l40s-48gb"),
                 ("l40", None), ("a10", "a10-24gb"), ("l4", "l4-24gb"), ("4090", "rtx4090-24gb"),
                 ("3090", "rtx3090-24gb"), ("v100", "v100-32gb"), ("t4", "t4-16gb"))


def known_chip(device_kind: str) -> Chip | None:
  """The table's chip for jax's `device_kind` ('TPU v5 lite', 'NVIDIA H100 80GB HBM3'), or None."""
  kind = device_kind.lower()
  key = next((key for marker, key in _DEVICE_KINDS if marker in kind), None)
  return None if key is None else TPU_CHIPS.get(key) or GPUS.get(key)


def peak_flops(device=None) -> float | None:
  """Dense bf16 peak FLOP/s of one device (default: JAX's first), None when unknown (CPUs)."""
  if device is None:
    import jax
    device = jax.devices()[0]
  chip = known_chip(device.device_kind)
  return chip.peak_flops if chip else None


def mfu(flops_per_second: float, num_devices: int, peak: float | None) -> float | None:
  """Model FLOPs utilisation: achieved model FLOP/s over the devices' summed peak (None if unknown)."""
  return None if peak is None else flops_per_second / (peak * num_devices)


def platform_of(device) -> str:
  """"cpu", "gpu" or "tpu" for a JAX device (compile-only devices included)."""
  return "gpu" if device.platform in ("gpu", "cuda", "rocm") else device.platform


def gpu_memory_fraction() -> float:
  """The share of a GPU's memory JAX's allocator takes: $XLA_PYTHON_CLIENT_MEM_FRACTION or 0.90."""
  value = os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "")
  try:
    return float(value) if value else GPTJAX_GPU_MEMORY_FRACTION
  except ValueError:
    return GPTJAX_GPU_MEMORY_FRACTION


def host_memory_bytes() -> int:
  """This machine's RAM (0 where the OS does not say)."""
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (AttributeError, ValueError, OSError):  # Windows has no sysconf
    return 0


def add_libtpu_flags() -> None:
  """Adds gptjax's libtpu flags to $LIBTPU_INIT_ARGS (read once, when libtpu loads)."""
  current = os.environ.get("LIBTPU_INIT_ARGS", "")
  missing = [flag for flag in LIBTPU_FLAGS if flag.split("=")[0] not in current]
  if missing:
    os.environ["LIBTPU_INIT_ARGS"] = " ".join([current, *missing]).strip()


# --- What this machine has, and starting JAX on it -------------------------------------------------

_NVIDIA_DEVICE_FILES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg")  # Linux, containers, WSL2


def accelerator_hardware() -> str | None:
  """"gpu" when an NVIDIA GPU is attached (its device files exist, or nvidia-smi lists one), "tpu"
  when a TPU is (/dev/accel*, /dev/vfio/<group>), None otherwise. Whatever JAX's plugins make of
  it: this is what tells a CPU-only jaxlib on a GPU machine from a machine without one."""
  if any(os.path.exists(path) for path in _NVIDIA_DEVICE_FILES) or _nvidia_smi_lists_a_gpu():
    return "gpu"
  if glob.glob("/dev/accel*") or [p for p in glob.glob("/dev/vfio/*") if p[-1].isdigit()]:
    return "tpu"
  return None


# What to install when JAX sees only the CPU of a machine with this hardware.
_INSTALL_FIX = {
    "gpu": 'pip install "jax[cuda12]" (gptjax\'s [cuda] extra; "jax[cuda13]" for CUDA 13 '
           'drivers)',
    "tpu": 'pip install "jax[tpu]" (gptjax\'s [tpu] extra)'
}


def check_accelerator_used(allow_cpu: bool) -> None:
  """A UserError when this machine has a GPU or TPU but JAX runs on the CPU, unless that is on
  purpose (`allow_cpu`, or $JAX_PLATFORMS=cpu): a CPU-only jaxlib would train, many times slower,
  without a word."""
  import jax
  hardware = accelerator_hardware()
  if (hardware is None or allow_cpu or jax.devices()[0].platform != "cpu" or
      os.environ.get("JAX_PLATFORMS", "").strip() == "cpu"):
    return
  from gptjax.errors import UserError
  what = "an NVIDIA GPU" if hardware == "gpu" else "a TPU"
  raise UserError(
      f"this machine has {what}, but JAX sees only the CPU: the installed jaxlib cannot "
      f"use it. Fix: {_INSTALL_FIX[hardware]}, or train on the CPU on purpose with "
      f"--config.allow_cpu=True.")


def _nvidia_smi_lists_a_gpu() -> bool:
  command = shutil.which("nvidia-smi")
  if command is None:
    return False
  try:
    listed = subprocess.run([command, "-L"], capture_output=True, text=True, timeout=10)
  except (OSError, subprocess.SubprocessError):
    return False
  return listed.returncode == 0 and "GPU" in listed.stdout


# What accelerator plugins print on stderr when they load on a machine without their hardware:
# the CUDA plugin's libraries ("Could not find cuda drivers", and absl's note before it), libtpu's
# complaints about a missing TPU environment.
_PLUGIN_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR|"
    r"WARNING: Logging before InitGoogle\(\) is written to STDERR|"
    r"[IWE]\d{4} [\d:.]+ +\d+ (cudart_stub|common_lib)\.cc:\d+\]|"
    r"Failed to find host bounds for accelerator type|"
    r"=== Source Location Trace: ===|learning/.*libtpu_init_utils\.cc:\d+|"
    r"could not determine TPU (accelerator type|worker hostnames)")
_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "libtpu")


@contextlib.contextmanager
def quiet_plugins():
  """Drops the plugins' no-hardware lines from this process's stderr (file descriptor 2, which
  their C++ code writes to) while the block runs; every other line passes through as it comes."""
  if not any(importlib.util.find_spec(name) for name in _PLUGINS):
    yield
    return
  sys.stderr.flush()
  original = os.dup(2)
  read_end, write_end = os.pipe()
  os.dup2(write_end, 2)
  os.close(write_end)

  def pump():
    with os.fdopen(read_end, "rb") as lines:
      for line in lines:
        if not _PLUGIN_NOISE.search(line.decode("utf-8", "replace")):
          os.write(original, line)

  thread = threading.Thread(target=pump, name="gptjax-quiet-plugins", daemon=True)
  thread.start()
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(original, 2)  # closes the pipe's last write end: the pump reads to its end and stops
    thread.join()
    os.close(original)


def start_jax() -> None:
  """Imports JAX for a gptjax command, before anything else does.

  Without an accelerator (and $JAX_PLATFORMS unset), JAX runs on the CPU without trying the CUDA
  plugin or libtpu, which the planner's extras install: they would fail loudly and slowly. Their
  libraries still load (the planner compiles for GPUs and TPUs through them), with their
  no-hardware lines dropped. GPUs lend JAX 90% of their memory, libtpu gets gptjax's flags.
  """
  if "jax" in sys.modules:  # already started (a test, a notebook): leave it as it is
    return
  os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{GPTJAX_GPU_MEMORY_FRACTION:.2f}")
  add_libtpu_flags()
  if not os.environ.get("JAX_PLATFORMS") and accelerator_hardware() is None:
    os.environ["JAX_PLATFORMS"] = "cpu"
  with quiet_plugins():
    import jax  # noqa: F401
    from jax._src import xla_bridge  # plugins register here, not at the first jax.devices()
    discover = getattr(xla_bridge, "_discover_and_register_pjrt_plugins", None)
    if discover is not None:
      discover()
