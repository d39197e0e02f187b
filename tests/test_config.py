"""Config loading and validation: every preset, nanoGPT-style JSON, and the error messages."""

from __future__ import annotations

import json
import os

import ml_collections
import pytest

from conftest import CONFIGS_DIR, preset_files

from gptjax import config as config_lib
from gptjax import presets
from gptjax.errors import ConfigError

# The presets' table: (n_layer, n_head, n_embd, block_size, batch_size, vocab_size).
GPT2 = config_lib.GPT2_PADDED_VOCAB_SIZE
PRESETS = {
    "tiny": (4, 4, 192, 128, 16, GPT2),
    "tiny_char": (4, 4, 192, 128, 16, 256),
    "small": (6, 6, 384, 256, 32, GPT2),
    "small_char": (6, 6, 384, 256, 32, 256),
    "150M": (16, 12, 768, 256, 32, GPT2),
    "200M": (16, 14, 896, 256, 32, GPT2),
    "250M": (16, 16, 1024, 256, 32, GPT2),
    "150M_1024": (16, 12, 768, 1024, 24, GPT2),
    "200M_1024": (16, 14, 896, 1024, 20, GPT2),
    "250M_1024": (16, 16, 1024, 1024, 16, GPT2),
    "350M_1024": (24, 16, 1024, 1024, 12, GPT2),
    "500M_1024": (24, 16, 1280, 1024, 8, GPT2),
}
# Larger presets of the same family, sized and set by the fit planner to fit the devices their
# descriptions name (README, "Will it fit?").
LARGE_PRESETS = {
    "400M_1024": (28, 16, 1024, 1024, 8, GPT2),
    "1B_1024": (32, 24, 1536, 1024, 8, GPT2),
}
# The GPT-2 family: OpenAI's shapes, with biases, GPT-2's own vocabulary, no dropout.
GPT2_FAMILY = {
    "gpt2": (12, 12, 768, 1024),
    "gpt2-medium": (24, 16, 1024, 1024),
    "gpt2-large": (36, 20, 1280, 1024),
    "gpt2-xl": (48, 25, 1600, 1024),
}
ARCHITECTURE = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "vocab_size")
# A nanoGPT-style JSON preset: every architecture field, as users write them.
CUSTOM_JSON = {
    "name": "GPT-Custom",
    "description": "My custom configuration",
    "batch_size": 32,
    "block_size": 512,
    "vocab_size": 50304,
    "n_embd": 512,
    "n_head": 8,
    "n_layer": 8,
    "dropout": 0.2,
    "bias": False,
}


def write_json(tmp_path, values, name="my_custom.json"):
  path = tmp_path / name
  path.write_text(json.dumps(values))
  return str(path)


def test_every_listed_preset_exists():
  assert sorted(os.path.splitext(name)[0] for name in preset_files()) == sorted(
      [*PRESETS, *LARGE_PRESETS, *GPT2_FAMILY])


@pytest.mark.parametrize("preset", sorted(GPT2_FAMILY))
def test_gpt2_family_has_openais_shapes(preset):
  config = presets.load(os.path.join(CONFIGS_DIR, f"{preset}.py"))
  assert (config.n_layer, config.n_head, config.n_embd, config.block_size) == GPT2_FAMILY[preset]
  assert config.vocab_size == config_lib.GPT2_VOCAB_SIZE and config.bias is True


@pytest.mark.parametrize("file_name", preset_files())
def test_preset_loads_and_validates(file_name):
  config = presets.load(os.path.join(CONFIGS_DIR, file_name))
  config_lib.validate(config)
  assert config.model_name == os.path.splitext(file_name)[0]
  assert config.name.startswith("GPT-") and config.description


@pytest.mark.parametrize("preset", sorted({**PRESETS, **LARGE_PRESETS}))
def test_preset_architecture(preset):
  config = presets.load(os.path.join(CONFIGS_DIR, f"{preset}.py"))
  assert tuple(config[field] for field in ARCHITECTURE) == {**PRESETS, **LARGE_PRESETS}[preset]
  # nanoGPT's dropout, but the *_1024 presets are set for accelerators (fused attention, no
  # dropout, a remat policy)
  accelerator = preset.endswith("_1024")
  assert config.dropout == (0.0 if accelerator else 0.2)
  assert (config.attention, config.remat != "none") == ("auto", accelerator)
  assert config.bias is False
  expected_tokenizer = "bytes" if preset.endswith("_char") else "gpt2"
  assert config_lib.resolve_tokenizer(config) == expected_tokenizer
  model_config = config_lib.ModelConfig.from_config(config)
  assert model_config.n_embd % model_config.n_head == 0


def test_json_preset_loads_with_the_same_fields(tmp_path):
  path = write_json(tmp_path, CUSTOM_JSON)
  config = presets.load(path)
  config_lib.validate(config)
  for key, value in CUSTOM_JSON.items():
    assert config[key] == value, key
  assert config.model_name == "my_custom"
  assert isinstance(config.dropout, float)


def test_json_preset_device_field_is_ignored(tmp_path, capsys):
  path = write_json(tmp_path, {**CUSTOM_JSON, "device": "cuda"})
  config = presets.load(path)
  assert "device" not in config
  assert "device" in capsys.readouterr().err


def test_json_preset_without_name_or_description_is_named_by_its_file_and_shape(tmp_path):
  values = {key: value for key, value in CUSTOM_JSON.items() if key != "description"}
  config = presets.load(
      write_json(tmp_path, {
          **values, "n_layer": 16,
          "n_head": 16,
          "n_embd": 1024,
          "block_size": 1024
      }))
  assert config.description == "16-layer, 16-head, 1024-channel GPT (block 1024, vocab 50304)"
  assert config.name == "GPT-Custom"
  assert presets.load(write_json(tmp_path, {"n_layer": 2}, "unnamed.json")).name == "unnamed"
  assert presets.load(write_json(tmp_path, CUSTOM_JSON,
                                 "described.json")).description == "My custom configuration"


def test_every_config_field_has_its_comment():
  """field_comments() (what --help prints) reads a comment for every leaf of the base config."""

  def leaves(config, prefix=""):
    for key, value in config.items():
      if isinstance(value, ml_collections.ConfigDict):
        yield from leaves(value, f"{prefix}{key}.")
      else:
        yield prefix + key

  comments = config_lib.field_comments()
  assert sorted(comments) == sorted(leaves(config_lib.get_base_config()))
  assert all(len(comment) > 10 and "---" not in comment for comment in comments.values()), comments
  assert comments["max_iters"] == "Number of optimizer updates to run."
  assert comments["mesh.fsdp"].startswith("Fully sharded data parallelism")


def test_json_misspelt_key_names_key_suggestion_and_valid_fields(tmp_path):
  path = write_json(tmp_path, {**CUSTOM_JSON, "n_layers": 8})
  with pytest.raises(ConfigError) as info:
    presets.load(path)
  message = str(info.value)
  assert "'n_layers'" in message
  assert "Did you mean 'n_layer'?" in message
  assert "Valid fields:" in message and "block_size" in message and "vocab_size" in message


@pytest.mark.parametrize("key, value", [("n_layer", "eight"), ("bias", 1), ("dropout", "0.2"),
                                        ("name", 3), ("n_embd", True)])
def test_json_wrong_type_is_an_error(tmp_path, key, value):
  path = write_json(tmp_path, {**CUSTOM_JSON, key: value})
  with pytest.raises(ConfigError, match=key):
    presets.load(path)


@pytest.mark.parametrize("values", [{"n_layer": 4.5}, {"mesh": {"fsdp": 2.0}}])
def test_json_float_for_an_int_field_is_a_config_error(tmp_path, values):
  path = write_json(tmp_path, {**CUSTOM_JSON, **values})
  with pytest.raises(ConfigError, match="must be an integer"):
    presets.load(path)


def test_json_that_is_not_json_is_an_error(tmp_path):
  path = tmp_path / "broken.json"
  path.write_text("{\"n_layer\": 4,")
  with pytest.raises(ConfigError, match="not valid JSON"):
    presets.load(str(path))


def test_missing_config_file_is_an_error(tmp_path):
  with pytest.raises(ConfigError, match="does not exist"):
    presets.load(str(tmp_path / "no_such_preset.py"))


def validated(**overrides):
  config = config_lib.get_base_config()
  for key, value in overrides.items():
    config[key] = value
  config_lib.validate(config)
  return config


def test_base_config_validates():
  validated()


def test_n_embd_not_divisible_by_n_head():
  with pytest.raises(ConfigError) as info:
    validated(n_embd=100, n_head=3)
  message = str(info.value)
  assert "n_head" in message and "100" in message and "3" in message


@pytest.mark.parametrize("field",
                         ["n_layer", "n_head", "n_embd", "block_size", "vocab_size", "batch_size"])
@pytest.mark.parametrize("value", [0, -1])
def test_sizes_must_be_positive(field, value):
  with pytest.raises(ConfigError, match=field):
    validated(**{field: value})


@pytest.mark.parametrize("dropout", [1.0, -0.1])
def test_dropout_outside_unit_interval(dropout):
  with pytest.raises(ConfigError, match="dropout"):
    validated(dropout=dropout)


def test_vocab_too_small_for_gpt2():
  with pytest.raises(ConfigError, match="vocab_size") as info:
    validated(vocab_size=100, tokenizer="gpt2")
  assert "50257" in str(info.value)


def test_vocab_too_small_for_bytes():
  with pytest.raises(ConfigError, match="vocab_size") as info:
    validated(vocab_size=200, tokenizer="bytes")
  assert "256" in str(info.value)


def test_auto_tokenizer_follows_vocab_size():
  assert config_lib.resolve_tokenizer(validated(vocab_size=256)) == "bytes"
  assert config_lib.resolve_tokenizer(validated(vocab_size=50257)) == "gpt2"


def test_model_config_is_hashable_and_takes_the_fields():
  config = presets.load(os.path.join(CONFIGS_DIR, "150M.py"))
  model_config = config_lib.ModelConfig.from_config(config)
  assert hash(model_config) == hash(config_lib.ModelConfig.from_config(config))
  assert model_config.head_dim == 64
  assert model_config.architecture()["n_layer"] == 16


def test_remat_true_and_false_of_older_presets_configs_and_command_lines_read_as_full_and_none(
    tmp_path):
  """remat is a policy name now; True/False load as "full"/"none" from a .py preset, a JSON preset,
  --config.remat=True on the command line and a run's saved config (where ModelConfig reads it)."""
  from gptjax import cli
  assert presets.load("350M_1024").remat == "full" and presets.load("tiny").remat == "none"
  for value, name in ((True, "full"), (False, "none")):
    py = tmp_path / f"old_{value}.py"
    py.write_text("from gptjax.config import get_base_config\n\n\ndef get_config():\n"
                  f"  config = get_base_config()\n  config.remat = {value}\n  return config\n")
    assert presets.load(str(py)).remat == name
    assert presets.load(write_json(tmp_path, {**CUSTOM_JSON, "remat": value})).remat == name
    saved = ml_collections.ConfigDict({**config_lib.get_base_config().to_dict(), "remat": value})
    assert config_lib.ModelConfig.from_config(saved).remat == name
    assert config_lib.normalize(saved).remat == name
    for text in (str(value), str(value).lower(), str(int(value))):
      seen = []
      cli.run_command(lambda f: seen.append(f.config.remat),
                      lambda values: None,
                      None,
                      config="required",
                      uses_jax=False,
                      argv=["train", "--config=tiny", f"--config.remat={text}"])
      assert seen == [name], text
  validated(remat="dots_no_batch+attn_out")
  with pytest.raises(ConfigError, match="'maybe' is not a remat policy.*none, full, dots"):
    validated(remat="maybe")


def test_a_config_saved_before_the_new_fields_gives_their_defaults():
  old = {
      k: v
      for k, v in config_lib.get_base_config().to_dict().items()
      if k not in ("scan_layers", "loss_chunk_tokens")
  }
  model = config_lib.ModelConfig.from_config(ml_collections.ConfigDict({**old, "remat": True}))
  assert (model.remat, model.scan_layers, model.loss_chunk_tokens) == ("full", False, 0)
