"""Presets: shipped by name (gptjax/configs/), or your own .py or nanoGPT-style .json file.

  load("tiny_char")                 gptjax/configs/tiny_char.py, from any directory
  load("recipes/shakespeare_char_cpu")
  load("my_preset.py"), load("configs/my_custom.json")

A .py preset defines `get_config()` returning a ConfigDict (start from
`gptjax.config.get_base_config()`); a JSON preset is an object of fields (`{"name": ...,
"n_layer": ...}`), checked against the base config's names and types. `catalogue()` lists the
shipped presets; tools/ and the README's table read it.
"""

from __future__ import annotations

import difflib
import importlib.resources
import importlib.util
import json
import os
import sys
from typing import Any

import ml_collections

from gptjax import config as config_lib
from gptjax.errors import ConfigError

PRESET_EXTENSIONS = (".py", ".json")
# JSON preset fields that gptjax accepts but does not need (JAX picks its devices itself).
IGNORED_JSON_FIELDS = ("device",)


def gpt2_finetune_config(model_type: str) -> ml_collections.ConfigDict:
  """The base config with OpenAI's `model_type` GPT-2 (a GPT2_SIZES name) and fine-tuning defaults.

  The GPT-2 presets (configs/gpt2*.py) start from it and set their name and micro-batches.
  """
  config = config_lib.get_base_config()
  config.n_layer, config.n_head, config.n_embd = config_lib.GPT2_SIZES[model_type]
  config.block_size = config_lib.GPT2_BLOCK_SIZE
  # GPT-2's own vocabulary, unpadded: HF weights import and export exactly.
  config.vocab_size = config_lib.GPT2_VOCAB_SIZE
  config.bias = True
  config.tokenizer = "gpt2"
  # Fine-tuning defaults, after nanoGPT's finetune_shakespeare: a rate 20x below pretraining's, so
  # the updates adjust GPT-2's weights rather than overwrite them. Dropout off as there; try 0.1
  # (GPT-2's pretraining value) when a small corpus starts to overfit.
  config.dropout = 0.0
  config.learning_rate = 3e-5
  config.min_lr = 3e-6
  config.warmup_iters = 20
  config.max_iters = 1000
  config.eval_interval = 100
  config.eval_iters = 40
  return config


def modern_config(config: ml_collections.ConfigDict,
                  tie_embeddings: bool) -> ml_collections.ConfigDict:
  """A preset's config with modded-nanogpt's GPT-2 speedrun changes, its shape, batch and budget
  kept: rotary positions (no wpe), RMSNorm, a ReLU² MLP (4C: the GELU MLP's parameters), QK-norm,
  Muon for the hidden matrices (AdamW, at the preset's rate, for embeddings, head and norms) and
  warmup-stable-decay, down over the last 30%. The modern/* presets and
  recipes/shakespeare_char_cpu_modern are their counterparts through it."""
  config.positions, config.norm, config.mlp, config.qk_norm = "rope", "rmsnorm", "relu2", True
  config.tie_embeddings = tie_embeddings
  config.optimizer, config.lr_schedule, config.lr_decay_fraction = "muon", "wsd", 0.3
  return config


def shipped_dir() -> str:
  """The directory of the presets shipped inside the package."""
  return str(importlib.resources.files("gptjax") / "configs")


def catalogue(directory: str | None = None) -> dict[str, str]:
  """{name: path} of the presets in `directory` (default: the shipped ones, recipes/ included as
  "recipes/<name>"), sorted by name. Files starting with `_` or `.` are not presets.

  Raises:
    ConfigError: `directory` does not exist.
  """
  root = directory or shipped_dir()
  if not os.path.isdir(root):
    raise ConfigError(f"preset directory {root!r} does not exist. Fix: give a directory of "
                      f".py or .json presets.")
  found = {}
  for folder, _, names in os.walk(root):
    for name in names:
      if name.endswith(PRESET_EXTENSIONS) and not name.startswith(("_", ".")):
        path = os.path.join(folder, name)
        found[os.path.splitext(os.path.relpath(path, root))[0].replace(os.sep, "/")] = path
    if directory is not None:  # a user's directory: its own files only
      break
  return dict(sorted(found.items()))


def resolve(preset: str) -> str:
  """The file a preset argument names: a shipped preset's name, or a path to a .py or .json.

  Raises:
    ConfigError: neither, with the names that exist.
  """
  if preset.endswith(PRESET_EXTENSIONS):
    if os.path.isfile(preset):
      return preset
    name, stem = _preset_name(preset), os.path.splitext(preset)[0]
    sibling = next((stem + ext for ext in PRESET_EXTENSIONS if os.path.isfile(stem + ext)), None)
    shipped = catalogue()
    fix = (f"--config={sibling}, which exists"
           if sibling else f"the shipped preset of that name, --config={name}" if name in shipped
           else f"a shipped preset ({', '.join(shipped)}) or the path of your own")
    raise ConfigError(f"config file {preset!r} does not exist. Fix: {fix}.")
  shipped = catalogue()
  if preset in shipped:
    return shipped[preset]
  close = difflib.get_close_matches(preset, list(shipped), n=1)
  raise ConfigError(f"--config={preset}: no preset of that name." +
                    (f" Did you mean --config={close[0]}?" if close else "") + f" Fix: one of "
                    f"{', '.join(shipped)}, or the path of a .py or .json preset file "
                    f"(`python -m gptjax.show_configs` lists them).")


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """ml_collections' entry point: `--config=<this file>:<preset>` loads a preset by name or path
  (what gptjax's --config=<preset> becomes, see gptjax/cli.py); "" is the base config."""
  return config_lib.get_base_config() if not preset else load(preset)


def _preset_name(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def load(preset: str) -> ml_collections.ConfigDict:
  """Loads a preset: a name (`tiny_char`, `recipes/shakespeare_char_cpu`), a Python file with
  `get_config()` or a nanoGPT-style JSON object.

  Returns:
    The ConfigDict (not yet validated). `model_name` defaults to the preset's name.
  Raises:
    ConfigError: an unknown name, a missing file, unreadable JSON, unknown keys, a .py without
      get_config().
  """
  path = resolve(preset)
  extension = os.path.splitext(path)[1]
  if extension == ".json":
    config = _load_json_config(path)
  else:  # resolve() returns .py and .json files alone
    config = _load_python_config(path)
  if not config.model_name:
    config.model_name = _preset_name(path)
  return config_lib.normalize(config)  # remat True/False (older presets) as "full"/"none"


def _load_python_config(path: str) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location(f"gptjax_preset_{_preset_name(path)}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # A broken preset file is user input: report it without a traceback.
    raise ConfigError(f"config file {path!r} failed to load: {type(e).__name__}: {e}") from e
  if not hasattr(module, "get_config"):
    raise ConfigError(
        f"config file {path!r} has no get_config() function. Fix: define "
        f"get_config() returning a ConfigDict (copy the shipped gptjax/configs/tiny.py).")
  try:
    config = module.get_config()
  except Exception as e:  # the preset's own code failed: user input, reported without a traceback
    raise ConfigError(f"config file {path!r}: get_config() raised {type(e).__name__}: {e}. Fix: "
                      f"correct the preset (compare the shipped gptjax/configs/tiny.py).") from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"config file {path!r}: get_config() returned {type(config).__name__}, not "
                      f"a ConfigDict. Fix: start from gptjax.config.get_base_config() and return "
                      f"it (compare the shipped gptjax/configs/tiny.py).")
  return config


def _load_json_config(path: str) -> ml_collections.ConfigDict:
  try:
    with open(path, encoding="utf-8") as f:
      values = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ConfigError(f"config file {path!r} is not valid JSON: {e}. Fix: see the JSON example in "
                      f"README.md.") from e
  if not isinstance(values, dict):
    raise ConfigError(f"config file {path!r} must hold a JSON object of fields, got "
                      f"{type(values).__name__}.")
  config = config_lib.get_base_config()
  for key in IGNORED_JSON_FIELDS:
    if values.pop(key, None) is not None:
      print(f"note: {path}: field {key!r} is ignored (JAX chooses its devices; see config.mesh).",
            file=sys.stderr)
  apply_overrides(config, values, source=path)
  # Not the base config's name and description, which describe another shape.
  if "name" not in values:
    config.name = _preset_name(path)
  if "description" not in values:
    config.description = shape_description(config)
  return config


def shape_description(config: ml_collections.ConfigDict) -> str:
  """One line naming the architecture, e.g. "16-layer, 16-head, 1024-channel GPT (block 1024,
  vocab 50304)": the description of a JSON preset that gives none."""
  return (f"{config.n_layer}-layer, {config.n_head}-head, {config.n_embd}-channel GPT "
          f"(block {config.block_size}, vocab {config.vocab_size})")


def apply_overrides(config: ml_collections.ConfigDict, values: dict[str, Any], source: str) -> None:
  """Sets `values` (nested dicts allowed) on `config`, refusing unknown keys and wrong types."""
  for key, value in values.items():
    if key not in config:
      raise ConfigError(_unknown_key_message(key, config, source))
    current = config[key]
    if key == "remat" and isinstance(value, bool):  # older presets' true/false: "full"/"none"
      value = config_lib.remat_name(value)
    if isinstance(current, ml_collections.ConfigDict):
      if not isinstance(value, dict):
        raise ConfigError(f"{source}: field {key!r} must be an object with fields "
                          f"{sorted(current.keys())}, got {value!r}.")
      apply_overrides(current, value, source=f"{source}:{key}")
      continue
    kind = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string"
    }[type(current)]
    if isinstance(current, bool) != isinstance(
        value, bool) or (isinstance(current, int) and not isinstance(value, int)) or (isinstance(
            current, float) and not isinstance(value,
                                               (int, float))) or (isinstance(current, str) and
                                                                  not isinstance(value, str)):
      raise ConfigError(f"{source}: field {key!r} must be {kind}, got {value!r}. Fix: write it "
                        f"like the default, {json.dumps(current)}.")
    if isinstance(current, float) and isinstance(value, int):
      value = float(value)
    config[key] = value


def check_field_path(config: ml_collections.ConfigDict, dotted: str, source: str) -> None:
  """Raises ConfigError unless `dotted` (e.g. "mesh.fsdp") names a field of `config`."""
  node = config
  for key in dotted.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or key not in node:
      raise ConfigError(
          _unknown_key_message(key, node if isinstance(node, ml_collections.ConfigDict) else config,
                               source))
    node = node[key]


def check_field_value(config: ml_collections.ConfigDict, dotted: str, text: str) -> None:
  """Raises ConfigError unless `text` reads as the type of the field `dotted` (as absl would read
  --config.<dotted>=<text>): an integer, a number, true/false."""
  current = config
  for key in dotted.split("."):
    current = current[key]
  kinds = ((bool, "true or false", lambda t: t.lower() in
            ("true", "false", "1", "0")), (int, "an integer", lambda t: _parses(int, t)),
           (float, "a number", lambda t: _parses(float, t)))
  for kind, words, ok in kinds:
    if isinstance(current, kind):
      if not ok(text):
        raise ConfigError(f"--config.{dotted}={text}: {text!r} is not {words}. Fix: give "
                          f"{words}, e.g. --config.{dotted}={current}.")
      return


def _parses(kind, text: str) -> bool:
  try:
    kind(text)
    return True
  except ValueError:
    return False


def _unknown_key_message(key: str, config: ml_collections.ConfigDict, source: str) -> str:
  names = sorted(config.keys())
  close = difflib.get_close_matches(key, names, n=1)
  hint = f" Did you mean {close[0]!r}?" if close else ""
  return (f"{source}: unknown field {key!r}.{hint} Valid fields: {', '.join(names)}.")


def load_validated(preset: str) -> ml_collections.ConfigDict:
  """`load(preset)` then `validate`, with the preset named in a validation error."""
  config = load(preset)
  try:
    config_lib.validate(config)
  except ConfigError as e:
    raise ConfigError(f"{preset}: {e}") from e
  return config


def with_values(values: dict,
                base: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
  """`base` (default: the base config) with `values` set (None values skipped), validated.

  Raises:
    ConfigError: the library's message for the first invalid field.
  """
  config = config_lib.get_base_config() if base is None else base
  for key, value in values.items():
    if value is not None:
      config[key] = value
  config_lib.validate(config)
  return config
