"""A modern model (RoPE + RMSNorm + SwiGLU, with GQA, biases, an untied head, qk_norm) exported to
Hugging Face's Llama (or Qwen3) layout: `transformers` loads it and its float32 logits equal
gptjax's; what the formats cannot hold is refused in one line, writing nothing."""

from __future__ import annotations

import dataclasses
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import perturbed_params, run_module, tiny_config
from gptjax import hf_llama
from gptjax import params as params_lib
from gptjax.errors import UserError
from gptjax.model import GPT
from gptjax.model_config import ModelConfig

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

LLAMA = dict(positions="rope", norm="rmsnorm", mlp="swiglu", rope_base=500.0)
BASE = ModelConfig(vocab_size=97, block_size=16, n_layer=2, n_head=4, n_embd=32, **LLAMA)
CASES = {
    "llama": BASE,
    "gqa_untied_bias": dataclasses.replace(BASE, n_kv_head=2, tie_embeddings=False, bias=True),
    "mqa_mlp_hidden": dataclasses.replace(BASE, n_kv_head=1, mlp_hidden=48),
    "qwen3_qk_norm": dataclasses.replace(BASE, n_kv_head=2, qk_norm=True, tie_embeddings=False),
    "scanned": dataclasses.replace(BASE, n_kv_head=2, scan_layers=True),
}


def hf_logits(path, tokens: np.ndarray) -> tuple[str, np.ndarray]:
  model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
  with torch.no_grad():
    return type(model).__name__, model(torch.from_numpy(tokens)).logits.numpy()


@pytest.mark.parametrize("name", list(CASES))
def test_export_loads_in_transformers_with_equal_logits(name, tmp_path):
  config = CASES[name]
  params = perturbed_params(config)
  loader = hf_llama.save_hf_llama(GPT(config), params, str(tmp_path))
  tokens = np.random.default_rng(0).integers(0, config.vocab_size, (2, config.block_size))
  ours = np.asarray(GPT(config).apply({"params": params}, jnp.asarray(tokens)))
  loaded, theirs = hf_logits(str(tmp_path), tokens)
  assert loaded == loader == ("Qwen3ForCausalLM" if config.qk_norm else "LlamaForCausalLM")
  np.testing.assert_allclose(theirs, ours, atol=1e-5, rtol=0)
  # every parameter went somewhere: HF's model has exactly gptjax's count
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path))
  assert hf_model.num_parameters() == params_lib.count_params(config).total


@pytest.mark.parametrize("options, named", [
    (dict(positions="learned"), ["positions='learned'"]),
    (dict(mlp="relu2", logit_softcap=30.0), ["mlp='relu2'", "logit_softcap=30.0"]),
    (dict(norm="layernorm", mlp="gelu"), ["norm='layernorm'", "mlp='gelu'"]),
    (dict(qk_norm=True, bias=True), ["bias=True with qk_norm"]),
])
def test_what_llama_cannot_hold_is_one_line_naming_it_and_nothing_is_written(
    options, named, tmp_path):
  config = dataclasses.replace(BASE, **options)
  target = tmp_path / "hf"
  with pytest.raises(UserError) as error:
    hf_llama.save_hf_llama(GPT(config), perturbed_params(config), str(target))
  message = str(error.value)
  assert "\n" not in message and "Fix:" in message
  assert all(fragment in message for fragment in named), message
  assert not target.exists()


def test_a_trained_modern_run_exports_from_the_command_line(tmp_path):
  """`convert --run_dir R --to_hf D` on a run trained with Llama's options (and grouped-query
  attention) writes Llama's layout and says which class loads it."""
  config = tiny_config(tmp_path,
                       model_name="llama",
                       max_iters=2,
                       eval_interval=2,
                       positions="rope",
                       norm="rmsnorm",
                       mlp="swiglu",
                       n_kv_head=1)
  preset = tmp_path / "preset.py"
  preset.write_text("from gptjax.config import get_base_config\n\n\ndef get_config():\n"
                    "  config = get_base_config()\n"
                    f"  config.update({config.to_dict()!r})\n  return config\n")
  trained = run_module("-m", "gptjax.train", f"--config={preset}")
  assert trained.returncode == 0, trained.stderr[-3000:]
  run_dir, hf_dir = os.path.join(config.out_dir, "llama"), str(tmp_path / "hf")
  exported = run_module("-m", "gptjax.convert", f"--run_dir={run_dir}", f"--to_hf={hf_dir}")
  assert exported.returncode == 0, exported.stderr[-3000:]
  assert "transformers.LlamaForCausalLM.from_pretrained" in exported.stdout
  with open(os.path.join(hf_dir, "config.json")) as f:
    assert json.load(f)["num_key_value_heads"] == 1
  tokens = np.arange(16)[None] % 256
  from gptjax.checkpoint import load_run
  model, params, _, _, _ = load_run(run_dir, "latest")
  ours = np.asarray(model.apply({"params": params}, jnp.asarray(tokens)))
  np.testing.assert_allclose(hf_logits(hf_dir, tokens)[1], ours, atol=1e-5, rtol=0)
