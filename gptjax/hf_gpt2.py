"""Hugging Face GPT-2 format: safetensors directories in and out, the name mapping, init_from.

gptjax's parameters are GPT-2's, one to one (gptjax/model.py): HF's Conv1D weights are stored
(in, out) like gptjax's kernels, so `c_attn` (C, 3C) is gptjax's (C, 3, H, D) and the attention
`c_proj` (C, C) is (H, D, C), reshaped without copying. Both sides use tanh GELU ("gelu_new"),
LayerNorm eps 1e-5 and an output head tied to `wte`, so imported logits equal HF's. Weights are read
and written with `safetensors.numpy`: torch is only needed to read an old `pytorch_model.bin`.
Imported models keep GPT-2's vocabulary unpadded (50257), so nothing round-trips inexactly.
The command line over this module is `python -m gptjax.convert` (gptjax/convert.py).
"""

from __future__ import annotations

import json
import os
import re
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from gptjax.config import GPT2_BLOCK_SIZE, GPT2_SIZES, GPT2_VOCAB_SIZE, ModelConfig
from gptjax.errors import CheckpointError, ConfigError, UserError
from gptjax.model import GPT
from gptjax.params import to_layout

SAFETENSORS, SAFETENSORS_INDEX, TORCH_BIN = ("model.safetensors", "model.safetensors.index.json",
                                             "pytorch_model.bin")
# HF's causal-mask buffers, saved by old transformers versions: constants, not parameters.
_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)$")
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")  # gptjax's GELU is the tanh form


def _fail(where: str, problem: str, fix: str):
  raise CheckpointError(f"{where}: {problem}. Fix: {fix}.")


def read_hf_config(hf_dir: str) -> ModelConfig:
  """The gptjax architecture of the HF GPT-2 checkpoint in `hf_dir` (from its config.json).

  Raises:
    CheckpointError: no directory or config.json, not GPT-2, or a GPT-2 variant gptjax cannot run.
  """
  path = os.path.join(hf_dir, "config.json")
  if not os.path.isfile(path):
    _fail(
        hf_dir, "no config.json" if os.path.isdir(hf_dir) else "not a directory", "pass "
        "the directory that save_pretrained() or `hf download` wrote (config.json + weights)")
  try:
    with open(path, encoding="utf-8") as f:
      hf = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    _fail(path, f"unreadable ({e})", "re-download or re-export the checkpoint")
  if not isinstance(hf, dict) or hf.get("model_type") != "gpt2":
    found = hf.get("model_type") if isinstance(hf, dict) else type(hf).__name__
    _fail(
        path, f"model_type is {found!r}, not 'gpt2'", "gptjax imports GPT-2 checkpoints only "
        "(gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2, or GPT2LMHeadModel fine-tunes)")
  sizes = {}
  for field in ("n_layer", "n_head", "n_embd", "vocab_size", "n_positions"):
    value = hf.get(field, hf.get("n_ctx") if field == "n_positions" else None)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      _fail(path, f"field {field!r} is {value!r}, not a positive integer", "use a complete "
            "GPT2Config (GPT2Config().to_dict() lists every field)")
    sizes[field] = value
  n_embd, n_head = sizes["n_embd"], sizes["n_head"]
  checks = (("n_head", n_embd % n_head == 0, f"does not divide n_embd={n_embd}"),
            ("activation_function", hf.get("activation_function", "gelu_new")
             in _TANH_GELUS, f"is not a tanh GELU ({', '.join(_TANH_GELUS)}), which gptjax uses"),
            ("layer_norm_epsilon", abs(hf.get("layer_norm_epsilon", 1e-5) - 1e-5)
             < 1e-12, "differs from gptjax's 1e-5"), ("n_inner", hf.get("n_inner")
                                                      in (None, 4 * n_embd),
                                                      f"is not 4 * n_embd = {4 * n_embd}"),
            ("scale_attn_weights", hf.get("scale_attn_weights", True)
             is True, "must be true"), ("scale_attn_by_inverse_layer_idx",
                                        not hf.get("scale_attn_by_inverse_layer_idx", False),
                                        "must be false"),
            ("add_cross_attention", not hf.get("add_cross_attention", False), "must be false"))
  for field, ok, problem in checks:
    if not ok:
      _fail(path, f"field {field!r} = {hf.get(field)!r} {problem}", "gptjax runs standard GPT-2 "
            "only; pass a checkpoint with GPT-2's settings")
  return ModelConfig(vocab_size=sizes["vocab_size"],
                     block_size=sizes["n_positions"],
                     n_layer=sizes["n_layer"],
                     n_head=n_head,
                     n_embd=n_embd,
                     bias=True)


def _gptjax_path(hf_key: str) -> tuple[str, ...]:
  """"h.0.attn.c_attn.weight" -> ("h_0", "attn", "c_attn", "kernel"); "wte.weight" -> ("wte",)."""
  parts = re.sub(r"^h\.(\d+)\.", r"h_\1.", hf_key).split(".")
  if parts[0] in ("wte", "wpe"):
    return (parts[0],)
  if parts[-1] == "weight":
    parts[-1] = "scale" if parts[-2].startswith("ln_") else "kernel"
  return tuple(parts)


def tensor_table(config: ModelConfig) -> dict[str, tuple[tuple[str, ...], tuple, tuple]]:
  """{HF key, no "transformer." prefix: (gptjax path, HF shape, gptjax shape)}, biases included."""
  C, H, D = config.n_embd, config.n_head, config.head_dim
  shapes = {
      "wte.weight": (config.vocab_size, C),
      "wpe.weight": (config.block_size, C),
      "ln_f.weight": (C,),
      "ln_f.bias": (C,)
  }
  layer = {
      "ln_1.weight": (C,),
      "ln_1.bias": (C,),
      "ln_2.weight": (C,),
      "ln_2.bias": (C,),
      "attn.c_attn.weight": ((C, 3 * C), (C, 3, H, D)),
      "attn.c_attn.bias": ((3 * C,), (3, H, D)),
      "attn.c_proj.weight": ((C, C), (H, D, C)),
      "attn.c_proj.bias": (C,),
      "mlp.c_fc.weight": (C, 4 * C),
      "mlp.c_fc.bias": (4 * C,),
      "mlp.c_proj.weight": (4 * C, C),
      "mlp.c_proj.bias": (C,)
  }
  shapes.update({f"h.{i}.{k}": v for i in range(config.n_layer) for k, v in layer.items()})
  # A pair of shapes is (HF's, gptjax's): the attention weights keep their heads apart in gptjax.
  return {
      k: (_gptjax_path(k),) + (v if isinstance(v[0], tuple) else (v, v)) for k, v in shapes.items()
  }


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
  try:  # bfloat16 loads too: importing JAX registered ml_dtypes' bfloat16 with numpy
    return load_file(path)
  except (OSError, SafetensorError, TypeError, ValueError) as e:
    _fail(path, f"unreadable safetensors file ({e})", "re-download it")


def _read_tensors(hf_dir: str) -> tuple[dict[str, np.ndarray], str]:
  """(every tensor by name, the file(s) they came from) of the checkpoint's weights."""
  index, bin_path = os.path.join(hf_dir, SAFETENSORS_INDEX), os.path.join(hf_dir, TORCH_BIN)
  if os.path.isfile(index):  # sharded: the index names the part files
    try:
      with open(index, encoding="utf-8") as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
      _fail(index, f"unreadable index ({type(e).__name__}: {e})", "re-download the checkpoint")
  elif os.path.isfile(os.path.join(hf_dir, SAFETENSORS)):
    files = [SAFETENSORS]
  elif os.path.isfile(bin_path):
    try:
      import torch
    except ImportError:
      _fail(bin_path, "reading a PyTorch pickle needs torch, which is not installed",
            "pip install torch, or convert the file to model.safetensors where torch is")
    try:
      state = torch.load(bin_path, map_location="cpu", weights_only=True)
      return {k: v.float().numpy() for k, v in state.items()}, TORCH_BIN
    except Exception as e:  # torch raises many types for a truncated or foreign pickle
      _fail(bin_path, f"unreadable ({type(e).__name__}: {e})", "re-download the checkpoint")
  else:
    _fail(
        hf_dir, f"no weights ({SAFETENSORS}, {SAFETENSORS_INDEX} or {TORCH_BIN})", "pass the "
        "complete directory: save_pretrained() or `hf download` writes config.json and weights")
  tensors = {}
  for name in files:
    tensors.update(_load_safetensors(os.path.join(hf_dir, name)))
  return tensors, ", ".join(files)


def read_hf_gpt2(hf_dir: str) -> tuple[ModelConfig, dict[tuple[str, ...], np.ndarray]]:
  """(architecture, flat float32 numpy params keyed by gptjax path) of an HF GPT-2 directory."""
  config = read_hf_config(hf_dir)
  tensors, source = _read_tensors(hf_dir)
  tensors = {k.removeprefix("transformer."): v for k, v in tensors.items() if not _BUFFER.search(k)}
  where = os.path.join(hf_dir, source)
  lm_head = tensors.pop("lm_head.weight", None)
  if lm_head is not None and not np.array_equal(lm_head, tensors.get("wte.weight")):
    _fail(where, "lm_head.weight differs from wte.weight (an untied output head)",
          "gptjax ties the head to wte: export the model with tie_word_embeddings=true")
  table = tensor_table(config)
  arch = (f"config.json (n_layer={config.n_layer}, n_head={config.n_head}, "
          f"n_embd={config.n_embd}, n_positions={config.block_size}, "
          f"vocab_size={config.vocab_size})")
  missing, unexpected = sorted(set(table) - set(tensors)), sorted(set(tensors) - set(table))
  if missing or unexpected:
    _fail(
        where, f"tensors do not match {arch} (missing: {missing[:4] or 'none'}; unexpected: "
        f"{unexpected[:4] or 'none'})", "keep config.json and the weights of one model together")
  params = {}
  for key, (path, hf_shape, shape) in table.items():
    if tuple(tensors[key].shape) != hf_shape:
      _fail(
          where, f"tensor {key!r} has shape {tuple(tensors[key].shape)}, but {arch} needs "
          f"{hf_shape}", "keep config.json and the weights of one model together")
    params[path] = np.asarray(tensors[key], np.float32).reshape(shape)
  return config, params


def load_hf_gpt2(path: str) -> tuple[GPT, dict]:
  """Imports a local HF GPT-2 directory (config.json + model.safetensors or pytorch_model.bin).

  Args:
    path: the directory, as written by `save_pretrained` or `hf download`.
  Returns:
    (model, params): `model.apply({"params": params}, tokens)` gives HF's logits.
  """
  config, params = read_hf_gpt2(path)
  return GPT(config), traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in params.items()})


def hf_config_dict(config: ModelConfig, vocab_size: int) -> dict:
  """A complete GPT2Config dict for `config` with `vocab_size` embedding rows."""
  eot = GPT2_VOCAB_SIZE - 1 if vocab_size >= GPT2_VOCAB_SIZE else None  # <|endoftext|>
  return dict(architectures=["GPT2LMHeadModel"],
              model_type="gpt2",
              vocab_size=vocab_size,
              n_positions=config.block_size,
              n_ctx=config.block_size,
              n_embd=config.n_embd,
              n_layer=config.n_layer,
              n_head=config.n_head,
              n_inner=None,
              activation_function="gelu_new",
              resid_pdrop=config.dropout,
              embd_pdrop=config.dropout,
              attn_pdrop=config.dropout,
              layer_norm_epsilon=1e-5,
              initializer_range=0.02,
              summary_type="cls_index",
              summary_use_proj=True,
              summary_activation=None,
              summary_proj_to_labels=True,
              summary_first_dropout=0.1,
              scale_attn_weights=True,
              use_cache=True,
              scale_attn_by_inverse_layer_idx=False,
              reorder_and_upcast_attn=False,
              bos_token_id=eot,
              eos_token_id=eot,
              tie_word_embeddings=True)


def save_hf_gpt2(model: GPT, params, path: str, vocab_size: int | None = None) -> None:
  """Writes `path`/config.json and model.safetensors for `transformers.GPT2LMHeadModel`.

  Args:
    model, params: a gptjax GPT and its parameters.
    path: the directory to write (created; existing files of the same names are replaced).
    vocab_size: embedding rows to export; default: GPT-2's 50257 for a padded model (so HF's logits
      are the first 50257 of gptjax's), else all of them.
  """
  config = model.config
  if config.non_gpt2_options():  # GPT-2: learned positions, LayerNorm, 4x GELU, c_attn, tied head
    raise UserError(f"GPT-2's format cannot hold {', '.join(config.non_gpt2_options())}.")
  rows = vocab_size or (GPT2_VOCAB_SIZE
                        if config.vocab_size > GPT2_VOCAB_SIZE else config.vocab_size)
  if not 0 < rows <= config.vocab_size:
    raise UserError(f"save_hf_gpt2: vocab_size={rows} is outside 1..{config.vocab_size}, the "
                    f"model's embedding rows. Fix: pass at most {config.vocab_size}.")
  notes = [
      f"exporting the first {rows} of {config.vocab_size} vocabulary rows (the rest are "
      f"padding no tokenizer emits)"
  ] if rows < config.vocab_size else []
  if not config.bias:  # exact: a missing bias is a zero bias, in dense layers and LayerNorms alike
    notes.append("the model has no biases; GPT-2 format needs them, so they are written as zeros")
  print("".join(f"note: {note}.\n" for note in notes), end="", file=sys.stderr)
  flat = traverse_util.flatten_dict(to_layout(jax.device_get(nn.meta.unbox(params)), False))
  tensors = {}
  gpt2_shapes = tensor_table(ModelConfig(**{**config.architecture(), "bias": True}))
  for key, (gptjax_path, hf_shape, shape) in gpt2_shapes.items():
    value = flat.get(gptjax_path)
    if value is None and gptjax_path[-1] == "bias" and not config.bias:
      value = np.zeros(shape, np.float32)
    if value is None or tuple(value.shape) != shape:
      raise CheckpointError(f"save_hf_gpt2: parameter {'/'.join(gptjax_path)} is "
                            f"{None if value is None else tuple(value.shape)}, but the model "
                            f"config needs {shape}. Fix: pass the params of this model.")
    value = np.asarray(value, np.float32).reshape(hf_shape)
    tensors[f"transformer.{key}"] = np.ascontiguousarray(value[:rows] if key ==
                                                         "wte.weight" else value)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
    json.dump(hf_config_dict(config, rows), f, indent=2)
  # lm_head.weight is left out: GPT2LMHeadModel ties it to wte, as save_pretrained does.
  save_file(tensors, os.path.join(path, SAFETENSORS), metadata={"format": "pt"})


def check_local(name_or_dir: str, flag: str = "--config.init_from") -> None:
  """A ConfigError for what is wrong with `name_or_dir` on this machine alone: a file, or a path
  that does not exist (a hub name is looked up later, by resolve_hf)."""
  if os.path.isfile(name_or_dir):
    raise ConfigError(f"{flag}: {name_or_dir!r} is a file, not a directory. Fix: pass the Hugging "
                      f"Face GPT-2 directory that holds it (config.json and model.safetensors), "
                      f"e.g. {flag}={os.path.dirname(name_or_dir) or '.'}.")
  if not os.path.isdir(name_or_dir) and (name_or_dir.startswith(
      (".", "/", "~")) or name_or_dir.count("/") > 1):
    raise ConfigError(f"{flag}: directory {name_or_dir!r} does not exist. Fix: pass a local "
                      f"Hugging Face GPT-2 directory, or a hub name such as {flag}=gpt2.")


def resolve_hf(name_or_dir: str, flag: str = "--config.init_from") -> str:
  """A local directory for `name_or_dir`: the directory itself, or a hub model (gpt2, ...) from the
  Hugging Face cache, downloaded first when online.

  Raises:
    ConfigError: not a directory, and not in the cache nor downloadable; says how to supply one.
  """
  if os.path.isdir(name_or_dir):
    return name_or_dir
  check_local(name_or_dir, flag)
  how = (f"Fix: download it where there is network, with `hf download {name_or_dir} --local-dir "
         f"DIR` (`huggingface-cli download` in older huggingface_hub) or transformers' "
         f"GPT2LMHeadModel.from_pretrained({name_or_dir!r}).save_pretrained(DIR), then pass "
         f"{flag}=DIR")
  try:
    import huggingface_hub
  except ImportError:
    raise ConfigError(f"{flag}: {name_or_dir!r} is not a local directory, and huggingface_hub is "
                      f"not installed to find it in the hub cache. {how}.") from None
  # The cache and offline mode are read from the environment now: huggingface_hub reads them once,
  # at import. etag_timeout bounds each network wait, so an unreachable hub fails in seconds.
  home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
  options = dict(cache_dir=os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub"),
                 allow_patterns=["config.json", "*.safetensors", SAFETENSORS_INDEX],
                 etag_timeout=10)
  offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
  error = None
  for local_only in (True, False) if not offline else (True,):
    try:
      found = huggingface_hub.snapshot_download(name_or_dir, local_files_only=local_only, **options)
      if any(os.path.isfile(os.path.join(found, n)) for n in (SAFETENSORS, SAFETENSORS_INDEX)):
        return found
    except Exception as e:  # not cached, offline, no such repo, network down: all one answer
      error = e
  raise ConfigError(f"{flag}: {name_or_dir!r} is not a local directory, and the Hugging Face hub "
                    f"has no usable copy{' offline' if offline else ''} "
                    f"({type(error).__name__ if error else 'no weights'}). {how}.")


def apply_hf_architecture(config: ml_collections.ConfigDict,
                          init_from: str,
                          need_weights: bool = True) -> None:
  """Sets `config`'s architecture fields to the checkpoint's, noting on stderr each that changes;
  a smaller block_size stays, and the checkpoint's position table is cropped to it (as nanoGPT's
  crop_block_size).

  Args:
    config: the run's ConfigDict (changed in place).
    init_from: an HF GPT-2 directory or hub name (see `resolve_hf`).
    need_weights: False (the planner): OpenAI's GPT-2 sizes by hub name, with nothing downloaded.
  """
  if not need_weights and not os.path.isdir(init_from) and init_from in GPT2_SIZES:
    n_layer, n_head, n_embd = GPT2_SIZES[init_from]
    architecture = ModelConfig(GPT2_VOCAB_SIZE, GPT2_BLOCK_SIZE, n_layer, n_head, n_embd,
                               bias=True).architecture()
  else:
    architecture = read_hf_config(resolve_hf(init_from)).architecture()
  for field, value in architecture.items():
    if field == "block_size" and config.block_size < value:
      note = (f"block_size {config.block_size}: its {value} learned positions are cropped to the "
              f"first {config.block_size}.")
    elif config[field] != value:
      note, config[field] = f"{field} {config[field]} -> {value} (from the checkpoint)", value
    else:
      continue
    print(f"note: init_from {init_from}: {note}", file=sys.stderr)


def init_params_from(config: ml_collections.ConfigDict, abstract_params):
  """The params of `config.init_from`, placed on the shardings of `abstract_params`.

  Args:
    config: the run's config, its architecture already set by `apply_hf_architecture`.
    abstract_params: the param tree as ShapeDtypeStructs carrying their target shardings.
  Returns:
    The param tree of jax.Arrays, sharded as the training state expects.
  """
  _, loaded = read_hf_gpt2(resolve_hf(config.init_from))
  if loaded[("wpe",)].shape[0] > config.block_size:  # nanoGPT's crop_block_size
    loaded[("wpe",)] = loaded[("wpe",)][:config.block_size]
  if config.scan_layers:  # GPT-2's blocks stacked on a layers axis
    loaded = traverse_util.flatten_dict(to_layout(traverse_util.unflatten_dict(loaded), True))
  targets = traverse_util.flatten_dict(abstract_params)
  differing = sorted("/".join(p) for p in set(targets) ^ set(loaded)) + sorted(
      f"{'/'.join(p)} {loaded[p].shape} vs {t.shape}" for p, t in targets.items()
      if p in loaded and loaded[p].shape != t.shape)
  if differing:
    raise CheckpointError(f"init_from {config.init_from}: the config's architecture differs from "
                          f"the checkpoint's ({', '.join(differing[:4])}). Fix: call "
                          f"hf_gpt2.apply_hf_architecture(config, config.init_from) first.")
  return traverse_util.unflatten_dict({
      p: jax.device_put(loaded[p], t.sharding) for p, t in targets.items()
  })
