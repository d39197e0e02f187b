"""ModelConfig: the frozen, hashable architecture handed to the model, with how it computes.

gptjax/config.py holds the ConfigDict every run starts from; `ModelConfig.from_config` takes the
fields the model needs from it, and `for_platform` decides what depends on the devices the step is
compiled for (the attention kernel). The rules of those options (`validate_model_options`, part
of config.validate), dropout's random bits per platform, and `normalize` (older runs' remat
True/False as policy names) live here beside them.
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


def resolve_dropout_rng(config: ml_collections.ConfigDict, platform: str) -> str:
  """The PRNG implementation dropout uses on `platform`: "auto" is rbg on TPU, else threefry2x32."""
  if config.dropout_rng != "auto":
    return config.dropout_rng
  return "rbg" if platform == "tpu" else "threefry2x32"


def normalize(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` (changed in place, and returned) with its remat setting as a policy name: what
  loading a preset, a command line or a run's saved config does before anything reads it.

  The base config's remat is a FieldReference of any type (so not in --help's types), so that an
  older preset's `config.remat = True` and --config.remat=True still load; this turns bools into
  names where configs are loaded: presets.load, cli.run_command after parsing,
  checkpoint.load_run and training.run's resume."""
  if "remat" in config and remat_name(config.remat) != config.remat:
    name = remat_name(config.remat)
    try:
      config.remat = name
    except TypeError:  # a plain bool field (a saved config read back), not the base's reference
      with config.unlocked():
        del config["remat"]
        config.remat = name
  return config


def validate_model_options(config: ml_collections.ConfigDict) -> None:
  """config.validate's rules for how the model computes (attention, remat, the loss, the layout);
  raises ConfigError on the first broken one."""
  if config.attention not in ATTENTION_IMPLEMENTATIONS:
    _fail("attention", f"{config.attention!r} is not an attention implementation",
          f"--config.attention=auto (or {', '.join(ATTENTION_IMPLEMENTATIONS[1:])})")
  if config.attention == "cudnn" and config.dtype == "float32":
    _fail("attention", "'cudnn' (cuDNN's fused kernel) takes bfloat16 or float16, not float32",
          "--config.dtype=bfloat16, or --config.attention=auto (xla in float32)")
  if config.attention in PALLAS_ATTENTION and config.block_size % PALLAS_BLOCK:
    _fail(
        "attention", f"{config.attention!r} cuts the sequence into blocks of {PALLAS_BLOCK} "
        f"tokens, and block_size={config.block_size} is not a multiple of {PALLAS_BLOCK}",
        f"a block_size that is, e.g. --config.block_size="
        f"{max(1, round(config.block_size / PALLAS_BLOCK)) * PALLAS_BLOCK}, or "
        f"--config.attention=auto (xla there)")
  if remat_name(config.remat) not in REMAT_POLICIES:
    _fail(
        "remat", f"{config.remat!r} is not a remat policy",
        f"one of {', '.join(REMAT_POLICIES)}, e.g. --config.remat=full (true and false read as "
        "full and none)")
  if isinstance(
      config.loss_chunk_tokens,
      bool) or not isinstance(config.loss_chunk_tokens, int) or config.loss_chunk_tokens < 0:
    _fail("loss_chunk_tokens", f"{config.loss_chunk_tokens!r} is not a number of tokens",
          "--config.loss_chunk_tokens=0 (the whole batch's logits at once) or a chunk, e.g. 4096")
  if not isinstance(config.scan_layers, bool):
    _fail("scan_layers", f"{config.scan_layers!r} is not true or false",
          "--config.scan_layers=False (or True)")


def _fail(field, message, fix):
  raise ConfigError(f"config field {field!r}: {message}. Fix: {fix}.")
