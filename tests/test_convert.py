"""GPT-2 interop: Hugging Face weights in and out, proven equal to transformers' GPT2LMHeadModel.

Every HF model is built from a small random GPT2Config (nothing is downloaded), with every
parameter perturbed away from its initial value so that biases and LayerNorms are checked too.
"""

from __future__ import annotations

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gptjax import checkpoint, convert, generate, hf_gpt2, presets  # noqa: E402
from gptjax.config import ModelConfig, get_base_config, validate  # noqa: E402
from gptjax.data import batches, dataset  # noqa: E402
from gptjax.data.tokenizer import ByteTokenizer  # noqa: E402
from gptjax.errors import CheckpointError, ConfigError, UserError  # noqa: E402
from gptjax.model import GPT  # noqa: E402
from gptjax.training import loop  # noqa: E402
from gptjax import params as params_lib  # noqa: E402

from conftest import (
    CONFIGS_DIR,
    assert_user_error,
    read_metrics,
    run_module,  # noqa: E402
    tiny_config)

# Two shapes: (n_layer, n_head, n_embd, n_positions, vocab_size). The second's vocab covers the
# byte tokenizer, so it can be fine-tuned and sampled as a gptjax run.
SHAPES = {"A": (2, 4, 64, 32, 100), "B": (3, 2, 32, 16, 257)}


def make_hf(shape, seed=0):
  n_layer, n_head, n_embd, n_positions, vocab_size = SHAPES[shape]
  torch.manual_seed(seed)
  config = transformers.GPT2Config(n_layer=n_layer,
                                   n_head=n_head,
                                   n_embd=n_embd,
                                   n_positions=n_positions,
                                   vocab_size=vocab_size,
                                   resid_pdrop=0.0,
                                   embd_pdrop=0.0,
                                   attn_pdrop=0.0,
                                   bos_token_id=vocab_size - 1,
                                   eos_token_id=vocab_size - 1)
  config._attn_implementation = "eager"  # the reference: plain softmax(QK^T / sqrt(D)) V
  model = transformers.GPT2LMHeadModel(config).eval()
  with torch.no_grad():  # zero biases and unit norms would hide a mis-mapped bias or scale
    for name, p in model.named_parameters():
      p.add_(torch.randn_like(p) * (0.1 if "ln_" in name else 0.02))
  return model


def hf_logits(hf, tokens):
  with torch.no_grad():
    return hf(input_ids=torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()


def random_tokens(vocab_size, batch, length, seed=0):
  return np.random.default_rng(seed).integers(0, vocab_size, (batch, length), dtype=np.int32)


@pytest.fixture(scope="module", params=sorted(SHAPES))
def hf_model(request, tmp_path_factory):
  """(HF model, its save_pretrained directory, (gptjax model, params) imported from it)."""
  hf = make_hf(request.param)
  directory = str(tmp_path_factory.mktemp(f"hf_{request.param}"))
  hf.save_pretrained(directory)
  return hf, directory, hf_gpt2.load_hf_gpt2(directory)


@pytest.fixture(scope="module")
def hf_bytes(tmp_path_factory):
  """Shape B, whose vocabulary (257) the byte tokenizer fits into."""
  hf = make_hf("B", seed=1)
  directory = str(tmp_path_factory.mktemp("hf_bytes"))
  hf.save_pretrained(directory)
  return hf, directory


@pytest.fixture(scope="module")
def apply_fn():
  return jax.jit(lambda model, params, tokens: model.apply({"params": params}, tokens),
                 static_argnums=0)


def test_import_gives_hf_logits(hf_model, apply_fn):
  hf, _, (model, params) = hf_model
  V, T = hf.config.vocab_size, hf.config.n_positions
  assert model.config == ModelConfig(vocab_size=V,
                                     block_size=T,
                                     n_layer=hf.config.n_layer,
                                     n_head=hf.config.n_head,
                                     n_embd=hf.config.n_embd,
                                     bias=True)
  for seed, (batch, length) in enumerate([(3, T), (2, T // 2 + 1)]):
    tokens = random_tokens(V, batch, length, seed)
    ours = np.asarray(apply_fn(model, params, jnp.asarray(tokens)))
    np.testing.assert_allclose(ours, hf_logits(hf, tokens), atol=1e-5, rtol=0)


def test_export_loads_in_transformers_with_equal_logits_and_round_trips(hf_model, tmp_path):
  hf, _, (model, params) = hf_model
  hf_gpt2.save_hf_gpt2(model, params, str(tmp_path))
  loaded, info = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path),
                                                              output_loading_info=True)
  assert not any(info.values()), info  # no missing, unexpected or mismatched keys
  tokens = random_tokens(hf.config.vocab_size, 2, hf.config.n_positions)
  np.testing.assert_allclose(hf_logits(loaded.eval(), tokens), hf_logits(hf, tokens), atol=1e-6)
  model2, params2 = hf_gpt2.load_hf_gpt2(str(tmp_path))
  assert model2.config == model.config
  jax.tree.map(np.testing.assert_array_equal, params2, params)  # import . export = identity


def test_greedy_generation_equals_hf_generate(hf_model):
  hf, _, (model, params) = hf_model
  prompt = random_tokens(hf.config.vocab_size, 1, 8, seed=3)
  new_tokens = min(20, hf.config.n_positions - 8)  # HF cannot go past n_positions: A makes 20
  ours = generate.generate(model,
                           params,
                           list(prompt[0]),
                           new_tokens,
                           seed=0,
                           temperature=0.0,
                           top_k=0,
                           vocab_limit=hf.config.vocab_size)
  with torch.no_grad():
    theirs = hf.generate(torch.as_tensor(prompt, dtype=torch.long),
                         max_new_tokens=new_tokens,
                         do_sample=False,
                         pad_token_id=0).numpy()
  np.testing.assert_array_equal(ours, theirs)


def test_pytorch_bin_imports_like_safetensors(hf_model, tmp_path):
  hf, directory, (_, params) = hf_model
  with open(os.path.join(directory, "config.json")) as f:
    (tmp_path / "config.json").write_text(f.read())
  state = {f"transformer.{k}": v for k, v in hf.transformer.state_dict().items()}
  state["lm_head.weight"] = hf.lm_head.weight.detach().clone()
  state["transformer.h.0.attn.masked_bias"] = torch.tensor(-1e4)  # old buffers are skipped
  torch.save(state, tmp_path / "pytorch_model.bin")
  _, params2 = hf_gpt2.load_hf_gpt2(str(tmp_path))
  jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_export_of_a_bias_free_padded_model_keeps_the_logits(tmp_path, capsys):
  config = ModelConfig(vocab_size=50304, block_size=16, n_layer=1, n_head=2, n_embd=32)
  model = GPT(config)
  tokens = random_tokens(50257, 2, 16)
  params = model.init(jax.random.key(0), jnp.asarray(tokens))["params"]
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(1), p.shape), params)
  hf_gpt2.save_hf_gpt2(model, params, str(tmp_path))
  assert "zeros" in capsys.readouterr().err
  loaded = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
  assert loaded.config.vocab_size == 50257 and loaded.config.eos_token_id == 50256
  ours = np.asarray(model.apply({"params": params}, jnp.asarray(tokens)))
  np.testing.assert_allclose(hf_logits(loaded, tokens), ours[..., :50257], atol=1e-5, rtol=0)


def test_init_params_from_places_the_checkpoint_on_the_target_shardings(hf_bytes, tmp_path):
  config = tiny_config(tmp_path, init_from=hf_bytes[1])
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])

  def abstract(config):
    boxed = params_lib.abstract_params(ModelConfig.from_config(config))
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                        nn.meta.unbox(boxed))

  with pytest.raises(CheckpointError, match="call hf_gpt2.apply_hf_architecture"):
    hf_gpt2.init_params_from(config, abstract(config))  # still the tiny config's architecture
  hf_gpt2.apply_hf_architecture(config, config.init_from)
  params = hf_gpt2.init_params_from(config, abstract(config))
  assert all(p.sharding == device for p in jax.tree.leaves(params))
  jax.tree.map(np.testing.assert_array_equal, params, hf_gpt2.load_hf_gpt2(hf_bytes[1])[1])


def test_fine_tuning_starts_from_hf_with_hf_loss(hf_bytes, tmp_path, capsys):
  hf, directory = hf_bytes
  config = tiny_config(tmp_path,
                       init_from=directory,
                       max_iters=3,
                       eval_interval=1000,
                       eval_iters=1,
                       log_interval=1,
                       batch_size=4)
  # training.loop.train() does this before validate(); the notes report every field it changes.
  hf_gpt2.apply_hf_architecture(config, config.init_from)
  err = capsys.readouterr().err
  assert f"init_from {directory}: n_layer 2 -> 3 (from the checkpoint)" in err
  assert "vocab_size 256 -> 257" in err and "bias False -> True" in err
  loop.train(config)
  first = read_metrics(os.path.join(config.out_dir, config.model_name))[0]
  windows = batches.train_batch(
      dataset.open_tokens(config).train, config.seed, 0, 1, config.batch_size, config.block_size)[0]
  with torch.no_grad():
    logits = hf(input_ids=torch.as_tensor(windows[:, :-1], dtype=torch.long)).logits
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 torch.as_tensor(windows[:, 1:]).long().reshape(-1))
  assert first["step"] == 1
  np.testing.assert_allclose(first["train_loss"], float(expected), rtol=1e-5)


def test_init_from_keeps_a_smaller_block_size_and_crops_the_positions(hf_bytes, tmp_path, capsys):
  """--config.block_size=8 under a 16-position GPT-2: kept, and wpe cropped to its first 8 rows
  (nanoGPT's crop_block_size), so the first loss is HF's on 8-token windows; the run samples at
  8; the planner takes GPT-2's sizes with the smaller block, with nothing downloaded."""
  hf, directory = hf_bytes
  config = tiny_config(tmp_path,
                       init_from=directory,
                       block_size=8,
                       max_iters=1,
                       eval_interval=1000,
                       eval_iters=1,
                       batch_size=4)
  loop.train(config)
  assert config.block_size == 8
  assert "block_size 8: its 16 learned positions are cropped to the first 8" in capsys.readouterr(
  ).err
  first = read_metrics(os.path.join(config.out_dir, config.model_name))[0]
  windows = batches.train_batch(
      dataset.open_tokens(config).train, config.seed, 0, 1, config.batch_size, 8)[0]
  with torch.no_grad():
    logits = hf(input_ids=torch.as_tensor(windows[:, :-1], dtype=torch.long)).logits
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 torch.as_tensor(windows[:, 1:]).long().reshape(-1))
  np.testing.assert_allclose(first["train_loss"], float(expected), rtol=1e-5)
  model, params, saved, _, _ = checkpoint.load_run(os.path.join(config.out_dir, config.model_name))
  assert params["wpe"].shape == (8, 32) and model.config.block_size == saved.block_size == 8
  prompt = [int(t) for t in ByteTokenizer().encode("ROMEO: ")]
  tokens = generate.generate(model, params, prompt, 12, seed=0, temperature=0.0, top_k=0)
  assert tokens.shape == (1, len(prompt) + 12)  # past 8 positions: the sliding window
  planned = get_base_config()
  planned.update(dict(block_size=128, init_from="gpt2"))
  hf_gpt2.apply_hf_architecture(planned, "gpt2", need_weights=False)
  assert (planned.n_layer, planned.n_embd, planned.block_size) == (12, 768, 128)


def test_from_hf_run_directory_samples_and_exports(hf_bytes, tmp_path):
  hf, directory = hf_bytes
  run_dir = str(tmp_path / "out" / "imported")
  convert.import_to_run_dir(directory, run_dir)
  model, params, config, step, _ = checkpoint.load_run(run_dir)
  assert step == 0 and config.init_from == directory and config.tokenizer == "auto"
  prompt = [int(t) for t in ByteTokenizer().encode("ROMEO:")]
  ours = generate.generate(model,
                           params,
                           prompt,
                           8,
                           seed=0,
                           temperature=0.0,
                           top_k=0,
                           vocab_limit=257)
  with torch.no_grad():
    theirs = hf.generate(torch.as_tensor([prompt]),
                         max_new_tokens=8,
                         do_sample=False,
                         pad_token_id=0).numpy()
  np.testing.assert_array_equal(ours, theirs)
  with pytest.raises(CheckpointError, match="already holds checkpoints"):
    convert.import_to_run_dir(directory, run_dir)
  convert.export_run_dir(run_dir, str(tmp_path / "exported"))
  exported = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "exported")).eval()
  tokens = random_tokens(256, 2, 16)
  np.testing.assert_allclose(hf_logits(exported, tokens), hf_logits(hf, tokens), atol=1e-6)


@pytest.mark.parametrize("preset, hf_count", [("gpt2", 124_439_808), ("gpt2-medium", 354_823_168),
                                              ("gpt2-large", 774_030_080),
                                              ("gpt2-xl", 1_557_611_200)])
def test_gpt2_presets_have_hf_shapes_and_counts(preset, hf_count):
  config = presets.load(os.path.join(CONFIGS_DIR, f"{preset}.py"))
  validate(config)
  hf_config = hf_gpt2.hf_config_dict(ModelConfig.from_config(config), config.vocab_size)
  with torch.device("meta"):  # shapes only: nothing is allocated
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config))
  assert hf.num_parameters() == hf_count == params_lib.count_params(
      ModelConfig.from_config(config)).total
  assert config.init_from == "" and config.bias and config.vocab_size == 50257


def test_init_from_a_hub_name_uses_the_hub_cache_offline(hf_bytes, tmp_path, monkeypatch):
  snapshot = tmp_path / "hub" / "models--gpt2" / "snapshots" / "0123abcd"
  snapshot.mkdir(parents=True)
  (tmp_path / "hub" / "models--gpt2" / "refs").mkdir()
  (tmp_path / "hub" / "models--gpt2" / "refs" / "main").write_text("0123abcd")
  for name in ("config.json", "model.safetensors"):
    (snapshot / name).write_bytes(open(os.path.join(hf_bytes[1], name), "rb").read())
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("HF_HOME", str(tmp_path))
  monkeypatch.delenv("HF_HUB_CACHE", raising=False)
  assert hf_gpt2.resolve_hf("gpt2") == str(snapshot)
  config = get_base_config()
  hf_gpt2.apply_hf_architecture(config, "gpt2")
  assert (config.n_layer, config.n_embd, config.vocab_size, config.bias) == (3, 32, 257, True)


# --- Bad input: one clear UserError each ------------------------------------------------------


def test_directory_without_weights(hf_bytes, tmp_path):
  (tmp_path / "config.json").write_text(open(os.path.join(hf_bytes[1], "config.json")).read())
  with pytest.raises(CheckpointError, match="no weights .*model.safetensors"):
    hf_gpt2.load_hf_gpt2(str(tmp_path))


@pytest.mark.parametrize("change, message", [
    (dict(model_type="llama"), "model_type is 'llama', not 'gpt2'"),
    (dict(n_embd=None), "field 'n_embd' is None, not a positive integer"),
    (dict(activation_function="relu"), "field 'activation_function' = 'relu' is not a tanh GELU"),
])
def test_non_gpt2_config(hf_bytes, tmp_path, change, message):
  with open(os.path.join(hf_bytes[1], "config.json")) as f:
    hf_config = json.load(f)
  hf_config.update(change)
  (tmp_path / "config.json").write_text(
      json.dumps({
          k: v for k, v in hf_config.items() if v is not None
      }))
  with pytest.raises(CheckpointError, match=message):
    hf_gpt2.load_hf_gpt2(str(tmp_path))


def test_mismatched_tensor_shape(hf_bytes, tmp_path):
  from safetensors.numpy import load_file, save_file
  directory = hf_bytes[1]
  (tmp_path / "config.json").write_text(open(os.path.join(directory, "config.json")).read())
  tensors = load_file(os.path.join(directory, "model.safetensors"))
  key = next(k for k in tensors if k.endswith("wpe.weight"))
  tensors[key] = tensors[key][:-1]
  save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(CheckpointError,
                     match=r"'wpe.weight' has shape \(15, 32\), but config.json "
                     r"\(.*n_positions=16.*\) needs \(16, 32\)"):
    hf_gpt2.load_hf_gpt2(str(tmp_path))


def test_init_from_a_hub_name_offline_without_a_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
  monkeypatch.delenv("HF_HUB_CACHE", raising=False)
  config = get_base_config()
  config.init_from = "gpt2"
  with pytest.raises(ConfigError) as error:
    hf_gpt2.apply_hf_architecture(config, config.init_from)
  assert isinstance(error.value, UserError)
  assert "hf download gpt2 --local-dir DIR" in str(error.value)
  assert "--config.init_from=DIR" in str(error.value)
  with pytest.raises(ConfigError, match="directory './missing' does not exist"):
    hf_gpt2.resolve_hf("./missing")


def test_cli_from_hf_without_weights_exits_2(tmp_path):
  (tmp_path / "hf").mkdir()
  (tmp_path / "hf" / "config.json").write_text(
      json.dumps(
          dict(model_type="gpt2", n_layer=1, n_head=1, n_embd=8, n_positions=8, vocab_size=256)))
  result = run_module("-m", "gptjax.convert", "--from_hf", str(tmp_path / "hf"), "--out",
                      str(tmp_path / "out" / "run"))
  assert_user_error(result, "no weights")
  assert result.stderr.startswith("error:")


def test_eval_of_hf_weights_equals_transformers_loss(hf_bytes, tmp_path, monkeypatch):
  """gptjax.eval --init_from on a text's validation part: transformers' own loss over the same
  windows, and bits per byte from the decoded text."""
  from conftest import TEXT, run_command
  hf, directory = hf_bytes
  monkeypatch.chdir(tmp_path)  # the token cache goes to ./out, as gptjax.train's default puts it
  (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
  result = run_command("gptjax.eval", f"--init_from={directory}", "--input_file=text.txt", "--json")
  assert result.returncode == 0, result.stderr[-3000:]
  figures = json.loads(result.stdout.strip().splitlines()[-1])
  config = get_base_config()
  config.update(dict(vocab_size=257, block_size=16, input_file="text.txt"))
  val = np.asarray(dataset.open_tokens(config).val, np.int64)
  n = (len(val) - 1) // 16
  windows = np.stack([val[i * 16:i * 16 + 17] for i in range(n)])
  with torch.no_grad():
    logits = hf(input_ids=torch.as_tensor(windows[:, :-1])).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 257),
                                             torch.as_tensor(windows[:, 1:]).reshape(-1))
  text = ByteTokenizer().decode(val[1:1 + 16 * n][val[1:1 + 16 * n] != 255]).encode("utf-8")
  assert figures["tokens"] == 16 * n and figures["bytes"] == len(text)
  np.testing.assert_allclose(figures["loss"], float(loss), rtol=1e-5)
  np.testing.assert_allclose(figures["bpb"],
                             float(loss) * 16 * n / np.log(2) / len(text),
                             rtol=1e-5)


def test_scanned_layers_export_and_fine_tune_from_hf(hf_bytes, tmp_path):
  """A scan_layers model exports GPT-2's tensors (unstacked), and init_from stacks GPT-2's blocks
  for a scan_layers run."""
  _, directory = hf_bytes
  model, params = hf_gpt2.load_hf_gpt2(directory)
  scanned = GPT(dataclasses.replace(model.config, scan_layers=True))
  stacked = params_lib.to_layout(params, scan_layers=True)
  hf_gpt2.save_hf_gpt2(scanned, stacked, str(tmp_path / "exported"))
  jax.tree.map(np.testing.assert_array_equal,
               hf_gpt2.load_hf_gpt2(str(tmp_path / "exported"))[1], params)
  config = tiny_config(tmp_path, init_from=directory, scan_layers=True)
  hf_gpt2.apply_hf_architecture(config, config.init_from)
  abstract = nn.meta.unbox(params_lib.abstract_params(ModelConfig.from_config(config)))
  jax.tree.map(np.testing.assert_array_equal, hf_gpt2.init_params_from(config, abstract), stacked)
