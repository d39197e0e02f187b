"""ModelConfig: the frozen, hashable architecture handed to the model, with how it computes.

gptjax/config.py holds the ConfigDict every run starts from; `ModelConfig.from_config` takes the
fields the model needs from it, and `for_platform` decides what depends on the devices the step is
compiled for (the attention kernel).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from gptjax.errors import ConfigError

# The fields that fix the parameter shapes (what a checkpoint must agree on), in the order shown.
ARCHITECTURE_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias")
ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash", "flash")
PALLAS_ATTENTION = ("splash", "flash")  # Pallas TPU kernels (gptjax/attention.py)
PALLAS_BLOCK = 128  # their tiles: the sequence is cut into blocks of this many tokens
# remat policies by name (gptjax/model.py maps them onto jax.checkpoint_policies); "none": no remat.
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "save_attn_out",
                  "dots_no_batch+attn_out")


def remat_name(value) -> str:
  """A remat setting as a policy name: True and False (and "true", 1, ... as older presets, command
  lines and runs' config.json have them) are "full" and "none"; anything else is returned as it
  is, for `validate` to judge."""
  if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
    value = value.lower() in ("true", "1")
  if value is None or (isinstance(value, (bool, int)) and value in (0, 1)):
    return "full" if value else "none"
  return value


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The architecture, frozen and hashable so it can be a static argument of jitted functions, with
  the settings of how the model computes (dtype, remat, attention, loss, layout)."""
  vocab_size: int
  block_size: int
  n_layer: int
  n_head: int
  n_embd: int
  dropout: float = 0.0
  bias: bool = False
  dtype: str = "float32"  # compute dtype; parameters are always float32
  remat: str = "none"  # a REMAT_POLICIES name
  attention: str = "auto"  # decided by for_platform; "auto" left undecided computes as "xla"
  loss_chunk_tokens: int = 0  # 0: the whole batch's logits at once
  scan_layers: bool = False  # the blocks under nn.scan, parameters stacked on a "layers" axis
  pallas_interpret: bool = False  # set by for_platform: Pallas TPU kernels interpreted off TPUs

  @property
  def head_dim(self) -> int:
    return self.n_embd // self.n_head

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "ModelConfig":
    """The fields of `config`; those it lacks (a run saved before they existed) keep their
    defaults, and a remat of True or False reads as "full" or "none"."""
    values = {f.name: config[f.name] for f in dataclasses.fields(cls) if f.name in config}
    if "remat" in values:
      values["remat"] = remat_name(values["remat"])
    return cls(**values)

  def for_platform(self, platform: str) -> "ModelConfig":
    """This config as it computes on `platform` ("cpu", "gpu", "tpu": the devices the step is
    compiled for, which need not be this machine's). "auto" attention becomes cuDNN's fused kernel
    on GPUs in 16 bits, splash on TPUs (with block_size a multiple of PALLAS_BLOCK) and XLA's
    einsum elsewhere; Pallas kernels off a TPU run in interpret mode (slow: for tests).

    Raises:
      ConfigError: a kernel that `platform` cannot run (cudnn off GPUs, Pallas on GPUs).
    """
    attention = self.attention
    if attention == "auto":
      if platform == "gpu" and self.dtype in ("bfloat16", "float16"):
        attention = "cudnn"
      elif platform == "tpu" and self.block_size % PALLAS_BLOCK == 0:
        attention = "splash"
      else:
        attention = "xla"
    if (attention == "cudnn" and platform != "gpu") or (attention in PALLAS_ATTENTION and
                                                        platform == "gpu"):
      kind = "NVIDIA GPUs" if attention == "cudnn" else "TPUs (and CPUs, interpreted)"
      raise ConfigError(f"config field 'attention': {attention!r} runs on {kind}, and the step is "
                        f"compiled for {platform}. Fix: --config.attention=auto (the fastest "
                        f"kernel there) or xla.")
    return dataclasses.replace(self,
                               attention=attention,
                               pallas_interpret=attention in PALLAS_ATTENTION and platform != "tpu")

  def architecture(self) -> dict[str, Any]:
    """The ARCHITECTURE_FIELDS: those that fix the parameter shapes (a checkpoint must agree)."""
    return {field: getattr(self, field) for field in ARCHITECTURE_FIELDS}
