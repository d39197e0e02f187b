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
# The architecture options beyond nanoGPT's GPT-2 (add_architecture_options): off by default, so
# every preset and checkpoint keeps its meaning. A checkpoint must agree on them too; a run saved
# before they existed has their defaults.
ARCHITECTURE_OPTIONS = ("positions", "rope_base", "norm", "mlp", "mlp_hidden", "qk_norm",
                        "tie_embeddings", "n_kv_head", "logit_softcap")
POSITIONS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu", "relu2")
SWIGLU_MULTIPLE_OF = 64  # SwiGLU's default hidden width: 8C/3 rounded up to a multiple of this
ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash", "flash")
PALLAS_ATTENTION = ("splash", "flash")  # Pallas TPU kernels (gptjax/attention.py)
PALLAS_BLOCK = 128  # their tiles: the sequence is cut into blocks of this many tokens
# remat policies by name (gptjax/model.py maps them onto jax.checkpoint_policies); "none": no remat.
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "save_attn_out",
                  "dots_no_batch+attn_out")
# remat "auto": the first of these (least recomputation first) whose compiled step leaves 10% of a
# device's memory free, decided where the step is compiled for its devices (planner.options).
REMAT_AUTO = "auto"
REMAT_AUTO_ORDER = ("none", "dots_no_batch", "full")


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
  remat: str = "none"  # a REMAT_POLICIES name; "auto" undecided (no train step) computes as none
  attention: str = "auto"  # decided by for_platform; "auto" left undecided computes as "xla"
  loss_chunk_tokens: int = 0  # 0: the whole batch's logits at once
  scan_layers: bool = False  # the blocks under nn.scan, parameters stacked on a "layers" axis
  pallas_interpret: bool = False  # set by for_platform: Pallas TPU kernels interpreted off TPUs
  # The ARCHITECTURE_OPTIONS, documented in add_architecture_options.
  positions: str = "learned"
  rope_base: float = 10000.0
  norm: str = "layernorm"
  mlp: str = "gelu"
  mlp_hidden: int = 0  # 0: mlp_width's rule
  qk_norm: bool = False
  tie_embeddings: bool = True
  n_kv_head: int = 0  # 0: n_head
  logit_softcap: float = 0.0

  @property
  def head_dim(self) -> int:
    return self.n_embd // self.n_head

  @property
  def kv_heads(self) -> int:
    """Heads of keys and values: n_head, or n_kv_head for grouped-query attention."""
    return self.n_kv_head or self.n_head

  @property
  def grouped(self) -> bool:
    """Whether q and k/v have separate kernels (c_q, c_kv) instead of GPT-2's c_attn."""
    return self.kv_heads != self.n_head

  @property
  def mlp_width(self) -> int:
    """The MLP's hidden width (F): mlp_hidden, or by default 4C for gelu and relu2, and for swiglu
    (whose gate and up matrices make three C x F matrices, not two) Llama's 2/3 of 4C rounded up
    to a multiple of SWIGLU_MULTIPLE_OF, about the parameters of a 4x MLP."""
    if self.mlp_hidden:
      return self.mlp_hidden
    if self.mlp != "swiglu":
      return 4 * self.n_embd
    return -(-(8 * self.n_embd // 3) // SWIGLU_MULTIPLE_OF) * SWIGLU_MULTIPLE_OF

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
    """The ARCHITECTURE_FIELDS and ARCHITECTURE_OPTIONS: what a checkpoint must agree on."""
    return {field: getattr(self, field) for field in ARCHITECTURE_FIELDS + ARCHITECTURE_OPTIONS}

  def non_gpt2_options(self) -> list[str]:
    """'field=value' for each architecture option GPT-2's format cannot hold (not its default;
    an n_kv_head of n_head and an mlp_hidden of 4C are GPT-2's)."""
    same = dict(n_kv_head=not self.grouped, mlp_hidden=self.mlp_width == 4 * self.n_embd)
    return [
        f"{field}={getattr(self, field)!r}" for field in ARCHITECTURE_OPTIONS
        if getattr(self, field) != option_default(field) and not same.get(field, False)
    ]


def option_default(field: str):
  """The default of an ARCHITECTURE_OPTIONS field (what a checkpoint saved before it had)."""
  return next(f.default for f in dataclasses.fields(ModelConfig) if f.name == field)


def add_architecture_options(config: ml_collections.ConfigDict) -> None:
  """The ARCHITECTURE_OPTIONS with their defaults (nanoGPT's GPT-2), added to the base config
  (config.get_base_config calls it; the comment above each field is its --help)."""
  # Positions: "learned" (GPT-2's wpe table) or "rope" (rotary embeddings on q and k, no wpe:
  # the half-split rotate_half convention of Llama and Hugging Face; head dim must be even).
  config.positions = "learned"
  # RoPE's base: dimension pair i of a head turns by position * rope_base^(-2i/D).
  config.rope_base = 10000.0
  # Norms: "layernorm" (GPT-2's: scale, and bias if bias) or "rmsnorm" (scale only, no bias, at
  # all times); both with epsilon 1e-5.
  config.norm = "layernorm"
  # MLP: "gelu" (GPT-2's, 4C hidden), "relu2" (ReLU squared, 4C hidden) or "swiglu" (Llama's
  # silu(x W_gate) * (x W_up) W_down: three matrices, hidden 8C/3 rounded up to a multiple of 64).
  config.mlp = "gelu"
  # The MLP's hidden width; 0: the rule of mlp above (4C, or for swiglu 8C/3 up to a multiple of 64).
  config.mlp_hidden = 0
  # RMSNorm of q and k per head before attention (and before RoPE), each with a head-dim scale.
  config.qk_norm = False
  # The output head is wte (GPT-2's tied head); False adds an untied lm_head (C x V).
  config.tie_embeddings = True
  # Key/value heads (grouped-query attention); n_head must be a multiple. 0 means n_head.
  config.n_kv_head = 0
  # Logits soft-capped to cap * tanh(logits / cap) (Gemma 2), in the loss and sampling; 0 is off.
  config.logit_softcap = 0.0


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
  if remat_name(config.remat) not in (*REMAT_POLICIES, REMAT_AUTO):
    _fail(
        "remat", f"{config.remat!r} is not a remat policy",
        f"one of {', '.join(REMAT_POLICIES)} or auto, e.g. --config.remat=full (true and false "
        "read as full and none)")
  if isinstance(
      config.loss_chunk_tokens,
      bool) or not isinstance(config.loss_chunk_tokens, int) or config.loss_chunk_tokens < 0:
    _fail("loss_chunk_tokens", f"{config.loss_chunk_tokens!r} is not a number of tokens",
          "--config.loss_chunk_tokens=0 (the whole batch's logits at once) or a chunk, e.g. 4096")
  if not isinstance(config.scan_layers, bool):
    _fail("scan_layers", f"{config.scan_layers!r} is not true or false",
          "--config.scan_layers=False (or True)")
  _validate_architecture_options(config)


def _validate_architecture_options(config: ml_collections.ConfigDict) -> None:
  for field, choices in (("positions", POSITIONS), ("norm", NORMS), ("mlp", MLPS)):
    if config[field] not in choices:
      _fail(field, f"{config[field]!r} is not one of {', '.join(choices)}",
            f"--config.{field}={choices[0]} (or {', '.join(choices[1:])})")
  head_dim = config.n_embd // config.n_head
  if config.positions == "rope" and head_dim % 2:
    _fail(
        "positions", f"'rope' turns pairs of a head's dimensions, and the head dim "
        f"n_embd/n_head={head_dim} is odd", "--config.positions=learned, or an even head dim, "
        f"e.g. --config.n_embd={config.n_embd + config.n_head}")
  if not config.rope_base > 1.0:
    _fail("rope_base", f"{config.rope_base!r} must exceed 1", "--config.rope_base=10000.0")
  for field in ("mlp_hidden", "n_kv_head"):
    value = config[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      _fail(field, f"{value!r} is not a whole number >= 0", f"--config.{field}=0 (the default)")
  for field in ("qk_norm", "tie_embeddings"):
    if not isinstance(config[field], bool):
      _fail(field, f"{config[field]!r} is not true or false", f"--config.{field}=False (or True)")
  kv_heads = config.n_kv_head or config.n_head
  if config.n_head % kv_heads:
    divisor = max(d for d in range(1, kv_heads + 1) if config.n_head % d == 0)
    _fail(
        "n_kv_head", f"n_head={config.n_head} is not a multiple of n_kv_head={kv_heads} (each "
        f"key/value head serves a group of query heads)",
        f"a divisor of n_head, e.g. --config.n_kv_head={divisor}, or 0 (n_head)")
  tensor = config.mesh.tensor
  if tensor > 1 and config.n_head % tensor == 0 and kv_heads % tensor:
    _fail(
        "n_kv_head", f"{kv_heads} key/value heads cannot be split over mesh.tensor={tensor}",
        f"a multiple of mesh.tensor that divides n_head, e.g. --config.n_kv_head="
        f"{min(d for d in range(tensor, config.n_head + 1, tensor) if config.n_head % d == 0)}")
  if not config.logit_softcap >= 0:
    _fail("logit_softcap", f"{config.logit_softcap!r} is negative",
          "--config.logit_softcap=0 (off) or a cap, e.g. 30.0")


def _fail(field, message, fix):
  raise ConfigError(f"config field {field!r}: {message}. Fix: {fix}.")
