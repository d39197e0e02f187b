"""The fit planner: targets, compiled and analytic estimates, --check, --search, and the trainer's
memory check. TPU and GPU targets compile without the hardware (libtpu, jax's CUDA plugin), each in
a subprocess: libtpu lets one process at a time load it."""

from __future__ import annotations

import json
import math
import os
import shlex

import jax
import ml_collections
import pytest

from conftest import assert_user_error, read_metrics, run_module, tiny_config
from gptjax import params, presets
from gptjax.config import ModelConfig
from gptjax.devices import DEVICE_MEMORY_ENV, known_chip
from gptjax.planner import estimate, fit, memory_model, targets
from gptjax.planner.compiled import figures_of
from gptjax.errors import ConfigError, DeviceMemoryError

GiB = 2**30
REQUIRED_JSON = ("target", "method", "devices", "total_bytes_per_device", "device_memory_bytes",
                 "fits", "step_seconds", "tokens_per_second")


def plan_json(*args, env=None):
  result = run_module("-m", "gptjax.plan", *args, "--json", env=env, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout)


def write_config(tmp_path, **overrides) -> str:
  """A preset file for the CLI: the test suite's tiny byte-level model with `overrides`."""
  config = tiny_config(tmp_path, **overrides)
  path = tmp_path / "preset.py"
  path.write_text("from gptjax.config import get_base_config\n\n\ndef get_config():\n"
                  "  config = get_base_config()\n"
                  f"  config.update({config.to_dict()!r})\n  return config\n")
  return str(path)


@pytest.mark.parametrize("name, chips, topology", [("tpu-v5e-1", 1, "v5e:1x1"),
                                                   ("tpu-v5e-8", 8, "v5e:2x4"),
                                                   ("tpu-v4-8", 4, "v4:2x2x1"),
                                                   ("tpu-v5p-8", 4, "v5p:2x2x1"),
                                                   ("tpu-v6e-8", 8, "v6e:2x4"),
                                                   ("tpu-v6e-256", 256, "v6e:16x16"),
                                                   ("gpu-h100-80gb", 1, "1x1x1"),
                                                   ("8xgpu-h100-80gb", 8, "1x1x8"),
                                                   ("16xgpu-a100-40gb", 16, "1x2x8")])
def test_targets_by_cloud_name(name, chips, topology):
  target = targets.parse_target(name)
  assert (target.num_devices, target.topology) == (chips, topology)


@pytest.mark.parametrize("name, fragment", [("tpu-v4-6", "tpu-v4-8"), ("tpu-v9-1", "tpu-v5e-1"),
                                            ("12xgpu-h100-80gb", "multiple of 8"),
                                            ("gpu-h100", "gpu-h100-80gb")])
def test_bad_target_names_say_what_exists(name, fragment):
  with pytest.raises(ConfigError, match=fragment):
    targets.parse_target(name)


@pytest.mark.parametrize(
    "kind, platform, count, name",
    [
        ("NVIDIA H100 80GB HBM3", "gpu", 1, "gpu-h100-80gb"),
        ("NVIDIA H200", "gpu", 8, "8xgpu-h200-141gb"),
        ("TPU v5 lite", "tpu", 8, "tpu-v5e-8"),
        ("TPU v4", "tpu", 4, "tpu-v4-8"),
        ("cpu", "cpu", 1, None),
        ("NVIDIA B200", "gpu", 1, None),  # known, but not to XLA's deviceless compiler here
    ])
def test_the_devices_at_hand_by_their_compile_only_name(kind, platform, count, name):
  assert targets.deviceless_name(kind, platform, count) == name
  if name:
    target = targets.parse_target(name)
    assert (target.chip, target.num_devices) == (known_chip(kind), count)


def test_gpu_memory_is_the_allocators_share(monkeypatch):
  monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
  target = targets.parse_target("gpu-a100-40gb")
  assert target.device_memory_bytes == 20 * GiB


def test_remat_auto_takes_the_least_recomputation_that_leaves_a_tenth_free():
  """The rule itself, on step sizes given per policy: the first of none, dots_no_batch, full under
  90% of the device; full when none is; any other remat priced once, as it is."""
  from gptjax.planner.options import decide_remat
  sizes = dict(none=95, dots_no_batch=60, full=30, dots=70)

  def decided(remat, memory):
    seen = []
    config, result = decide_remat(ml_collections.ConfigDict(dict(remat=remat)), memory, lambda c:
                                  (seen.append(c.remat) or c.remat, sizes[c.remat]))
    assert config.remat == result
    return result, seen

  assert decided("auto", 200) == ("none", ["none"])
  assert decided("auto", 100) == ("dots_no_batch", ["none", "dots_no_batch"])  # 95 > 90
  assert decided("auto", 66) == ("full", ["none", "dots_no_batch", "full"])  # 60 > 59.4
  assert decided("auto", 10) == ("full", ["none", "dots_no_batch", "full"])  # none fits
  assert decided("dots", 10) == ("dots", ["dots"])


def test_remat_auto_moves_past_a_policy_xla_refuses_as_too_big(tiny, monkeypatch):
  """A step XLA refuses to compile for the device (RESOURCE_EXHAUSTED at compile time, as a TPU
  refuses a program over its memory) counts as not fitting: auto compiles the next policy; with
  a definite remat the same refusal is the planner's one memory error."""
  from gptjax import sharding, step
  real = step.compile_train_step

  def refuse_none(setup, config):
    if config.remat == "none":
      raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Ran out of memory in memory space "
                                       "hbm. Used 20.5G of 15.75G hbm.")
    return real(setup, config)

  monkeypatch.setattr(step, "compile_train_step", refuse_none)
  said, config = [], tiny(remat="auto")
  decided, _, compiled = fit.compile_train_step(config, sharding.make_mesh(config), said.append)
  assert decided.remat == "dots_no_batch" and compiled is not None
  assert said[0].startswith("remat auto: dots_no_batch (the step per device: none refused by "
                            "XLA, dots_no_batch "), said
  with pytest.raises(DeviceMemoryError, match="Used 20.5G of 15.75G hbm"):
    fit.compile_train_step(tiny(remat="none"), sharding.make_mesh(config))


@pytest.mark.parametrize("target", ["gpu-rtx4090-24gb", "gpu-h100-80gb", "tpu-v5e-1"])
def test_the_planner_decides_remat_auto_as_training_does(target):
  """A plan of remat "auto" is the plan of the policy the rule picks from the plans of each
  policy, made one by one (the analytic model here: the same path as compiles)."""
  from gptjax.planner.compiled import with_fields
  device = targets.parse_target(target)
  config = with_fields(presets.load_validated("350M_1024"), remat="auto")
  plans = {
      policy: estimate.estimate(with_fields(config, remat=policy), device, method="analytic")
      for policy in ("none", "dots_no_batch", "full")
  }
  expected = next(
      (p for p, plan in plans.items() if plan.memory.total <= 0.9 * device.device_memory_bytes),
      "full")
  auto = estimate.estimate(config, device, method="analytic")
  assert auto.settings["remat"] == expected
  assert auto.to_json() | dict(notes=None) == plans[expected].to_json() | dict(notes=None)
  assert auto.notes[0].startswith(f"remat auto: {expected} (the step per device: none ")


def test_state_bytes_are_the_shards_of_an_exact_count():
  config = presets.load("configs/500M_1024.py")
  total = params.count_params(ModelConfig.from_config(config)).total
  mesh = jax.sharding.AbstractMesh((1, 8, 1), ("data", "fsdp", "tensor"))
  param_bytes, optimizer_bytes = estimate.state_bytes(config, mesh)
  # Every weight is sharded along `embed` (1280 = 8 x 160); norms' scales too.
  assert param_bytes == 4 * total // 8
  # AdamW's mu and nu like the params, and a few int32 step counters.
  assert 0 < optimizer_bytes - 2 * param_bytes <= 16


def test_local_plan_is_the_step_training_compiles(tiny, tmp_path):
  """The planner's local figure and the trainer's own compiled step agree to the byte."""
  from gptjax.training.loop import train
  config = tiny(max_iters=2, eval_interval=2)
  planned = estimate.estimate(config, targets.local_target())
  train(config)
  first = read_metrics(os.path.join(config.out_dir, config.model_name))[0]
  assert planned.method == estimate.COMPILED
  assert first["step_memory_bytes"] == planned.memory.total
  param_count = params.count_params(ModelConfig.from_config(config)).total
  assert planned.memory.params == 4 * param_count


def test_plan_cli_json_on_local(tmp_path):
  result = plan_json(f"--config={write_config(tmp_path)}", "--target=local")
  for key in REQUIRED_JSON:
    assert key in result, key
  assert result["method"] == "compiled" and result["fits"] and result["devices"] == 1
  assert result["step_seconds"] > 0 and "matmul rate" in result["step_time_source"]


@pytest.mark.compile_only
def test_tpu_compile_path_for_two_presets_on_two_targets(tmp_path):
  """libtpu compiles the real step for TPU slices on this CPU: params and optimizer state are
  the exact count's shards, and the time is XLA's TPU cost model, never negative. Its cost
  analysis counts the gradient-accumulation loop once: the planner runs it grad_accum_steps times."""
  cases = (("tiny_char", "tpu-v5e-1", 1, 1), ("tiny_char", "tpu-v5e-1", 1, 4), ("tiny", "tpu-v4-8",
                                                                                4, 1))
  seconds = {}
  for preset, target, devices, accumulate in cases:
    result = plan_json(f"--config={preset}", f"--target={target}",
                       f"--config.grad_accum_steps={accumulate}")
    seconds[preset, accumulate] = result["step_seconds"]
    assert (result["method"], result["devices"]) == ("compiled-deviceless", devices), result
    assert result["device_kind"].startswith("TPU")
    count = params.count_params(ModelConfig.from_config(presets.load(preset))).total
    memory = result["memory_bytes_per_device"]
    assert memory["params"] == pytest.approx(4 * count / devices, rel=0.01)
    assert result["fits"] and result["total_bytes_per_device"] < 0.1 * result["device_memory_bytes"]
    assert result["step_seconds"] > 0 and "XLA's TPU cost model" in result["step_time_source"]
    assert result["step_time_source"].startswith("compile-only")
    assert 0 < result["mfu"] < 1
  ratio = seconds["tiny_char", 4] / seconds["tiny_char", 1]
  assert 3 < ratio < 4.5, seconds  # four micro-batches (and their sum), one optimizer update


@pytest.mark.compile_only
def test_remat_saves_memory_in_bfloat16_with_dropout_on_tpu(tmp_path):
  """The bug that made remat cost memory on TPUs (threefry dropout bits materialised under remat)
  stays fixed: with dropout_rng auto (rbg on TPU) remat shrinks the activations."""
  preset = write_config(tmp_path,
                        n_layer=4,
                        n_head=4,
                        n_embd=256,
                        block_size=512,
                        batch_size=8,
                        dropout=0.2,
                        dtype="bfloat16")
  activations = {}
  for remat in (False, True):
    result = plan_json(f"--config={preset}", "--target=tpu-v5e-1", f"--config.remat={remat}")
    activations[remat] = result["memory_bytes_per_device"]["activations"]
  assert activations[True] < 0.6 * activations[False], activations


@pytest.mark.compile_only
def test_gpu_compile_path_and_roofline_time(tmp_path):
  """On GPUs two figures: the per-kernel roofline (a lower bound) and the expected time, the
  roofline over the efficiency published runs reach."""
  result = plan_json("--config=tiny", "--target=2xgpu-h100-80gb")
  assert (result["method"], result["devices"]) == ("compiled-deviceless", 2)
  assert result["roofline_source"].startswith("compile-only: per-kernel roofline")
  assert "expected = roofline / " in result["step_time_source"]
  assert result["step_seconds"] == pytest.approx(result["roofline_seconds"] /
                                                 result["gpu_efficiency"])
  assert result["mfu"] == pytest.approx(result["mfu_roofline"] * result["gpu_efficiency"])
  # A roofline can be no slower than the step's model FLOPs at the chips' peak.
  floor = result["model_flops_per_step"] / (2 * 494e12)  # float32 runs at the TF32 peak
  assert result["roofline_seconds"] >= floor


@pytest.mark.compile_only
def test_extrapolation_from_shallow_compiles_matches_the_full_compile(tmp_path):
  """--fast (1- and 2-layer compiles, extrapolated) against compiling all 6 layers."""
  preset = write_config(tmp_path,
                        n_layer=6,
                        n_head=4,
                        n_embd=128,
                        block_size=128,
                        batch_size=8,
                        dtype="bfloat16",
                        vocab_size=4096,
                        tokenizer="bytes")
  full = plan_json(f"--config={preset}", "--target=gpu-a100-40gb")
  fast = plan_json(f"--config={preset}", "--target=gpu-a100-40gb", "--fast")
  assert fast["extrapolated_from_layers"] == [1, 2] and full["extrapolated_from_layers"] is None
  assert fast["total_bytes_per_device"] == pytest.approx(full["total_bytes_per_device"], rel=0.05)


@pytest.mark.compile_only
def test_analytic_model_is_within_its_stated_error_of_the_gpu_compile(tmp_path):
  preset = write_config(tmp_path,
                        n_layer=4,
                        n_head=8,
                        n_embd=512,
                        block_size=512,
                        batch_size=8,
                        vocab_size=8192,
                        tokenizer="bytes",
                        dropout=0.1)
  for remat in (False, True):
    args = (f"--config={preset}", "--target=gpu-h100-80gb", f"--config.remat={remat}")
    compiled = plan_json(*args)
    analytic = plan_json(*args, "--method=analytic")
    assert analytic["method"] == "analytic"
    assert analytic["memory_bytes_per_device"]["params"] == (
        compiled["memory_bytes_per_device"]["params"])
    assert analytic["total_bytes_per_device"] == pytest.approx(compiled["total_bytes_per_device"],
                                                               rel=0.25), (remat, analytic,
                                                                           compiled)


@pytest.mark.compile_only
def test_check_names_every_problem_with_its_fix(tmp_path):
  preset = write_config(tmp_path, input_file=str(tmp_path / "missing.txt"))
  result = run_module("-m", "gptjax.plan", f"--config={preset}", "--target=8xgpu-h100-80gb",
                      "--check", "--config.batch_size=6")
  assert result.returncode == 2, result.stdout
  assert "batch_size" in result.stdout and "Fix:" in result.stdout
  result = run_module("-m", "gptjax.plan", f"--config={preset}", "--target=local", "--check")
  assert result.returncode == 2
  assert "missing.txt" in result.stdout and "does not exist" in result.stdout
  ok = run_module("-m", "gptjax.plan", f"--config={write_config(tmp_path)}", "--target=local",
                  "--check")
  assert ok.returncode == 0 and "check: OK" in ok.stdout, ok.stdout


def test_check_reports_memory_with_a_fix_that_fits(tmp_path):
  preset = write_config(tmp_path,
                        n_layer=4,
                        n_embd=256,
                        n_head=4,
                        block_size=256,
                        batch_size=32,
                        vocab_size=8192,
                        tokenizer="bytes")
  env = {DEVICE_MEMORY_ENV: "0.3"}
  result = run_module("-m",
                      "gptjax.plan",
                      f"--config={preset}",
                      "--target=local",
                      "--check",
                      env=env)
  assert result.returncode == 2
  [line] = [line for line in result.stdout.splitlines() if "memory:" in line]
  assert "0.30 GiB" in line and "Fix: --config." in line, line


def test_search_prints_a_command_that_trains(tmp_path):
  """On a pretend 0.3 GiB device the shipped settings do not fit; the searched command does, and
  runs: the planner's answer is a working training command."""
  preset = write_config(tmp_path,
                        n_layer=4,
                        n_embd=256,
                        n_head=4,
                        block_size=256,
                        batch_size=32,
                        vocab_size=8192,
                        tokenizer="bytes",
                        max_iters=2,
                        eval_interval=2,
                        eval_iters=1)
  env = {DEVICE_MEMORY_ENV: "0.3"}
  shipped = plan_json(f"--config={preset}", "--target=local", env=env)
  assert not shipped["fits"]
  result = run_module("-m",
                      "gptjax.plan",
                      f"--config={preset}",
                      "--target=local",
                      "--search",
                      "--verify=1",
                      env=env,
                      timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  [command] = [
      line.strip()
      for line in result.stdout.splitlines()
      if line.strip().startswith("python -m gptjax.train")
  ]
  assert "as given:" in result.stdout and "does NOT fit" in result.stdout
  assert "runners-up, compiled" in result.stdout or "also fitting" in result.stdout
  trained = run_module(*shlex.split(command)[1:], env=env, timeout=600)
  assert trained.returncode == 0, trained.stderr[-3000:]


def test_training_that_cannot_fit_stops_before_allocating(tmp_path):
  preset = write_config(tmp_path)
  result = run_module("-m", "gptjax.train", f"--config={preset}", env={DEVICE_MEMORY_ENV: "0.0001"})
  assert_user_error(result, "memory:", "Fix:", "Nothing was allocated")
  run_dir = tmp_path / "out" / "tiny"
  assert not (run_dir / "checkpoints").exists() or not os.listdir(run_dir / "checkpoints")
  assert not (run_dir / "config.json").exists()


def test_an_out_of_memory_error_from_xla_becomes_one_clear_error(tiny):
  config = tiny()
  with pytest.raises(DeviceMemoryError, match="ran out of memory.*Fix:"):
    with fit.explain_out_of_memory(config):
      raise jax.errors.JaxRuntimeError(
          "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 17179869184 bytes.")
  with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
    with fit.explain_out_of_memory(config):  # other XLA errors pass through unchanged
      raise jax.errors.JaxRuntimeError("INTERNAL: something else")


class _FakeCompiled:
  """A compiled step's analyses, as libtpu returns them for a module with unpriced ops."""

  def __init__(self, optimal_seconds, concat_bitcasts, call="ConcatBitcast"):
    self._optimal, self._count, self._call = optimal_seconds, concat_bitcasts, call

  def memory_analysis(self):
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
              "temp_size_in_bytes", "generated_code_size_in_bytes")
    return type("Memory", (), dict.fromkeys(fields, 1))()

  def cost_analysis(self):
    return {"flops": 1e12, "bytes accessed": 1e10, "optimal_seconds": self._optimal}

  def as_text(self):
    return (f'custom_call_target="{self._call}"\n' * self._count +
            'custom_call_target="AssumeGatherIndicesInBound"\n')  # priced: not added back


class _FakeTPU:
  device_kind = "TPU v5 lite"


def test_unpriced_tpu_ops_are_added_back_to_the_cost_models_time():
  tpu = _FakeTPU()
  assert figures_of(_FakeCompiled(-25.98, 26), tpu).optimal_seconds == pytest.approx(0.02)
  assert figures_of(_FakeCompiled(-12.9985, 13, "X64Combine"),
                    tpu).optimal_seconds == (pytest.approx(0.0015))
  assert figures_of(_FakeCompiled(0.5, 0), tpu).optimal_seconds == 0.5
  # Still negative after adding them back: not a time; the planner uses its roofline instead.
  assert figures_of(_FakeCompiled(-30.0, 2), tpu).optimal_seconds < 0


def test_generation_memory_is_params_and_the_kv_cache():
  model = ModelConfig.from_config(presets.load("configs/350M_1024.py"))
  generation = memory_model.generation_memory(model, batch=4)
  assert generation.params == 4 * params.count_params(model).total
  # K and V: L x B x T x C in the compute dtype (the preset's bfloat16)
  assert generation.kv_cache == 2 * 24 * 4 * 1024 * 1024 * memory_model.dtype_bytes(model.dtype)
  assert math.isclose(generation.total,
                      generation.params + generation.kv_cache + generation.working)


def test_search_tries_every_remat_policy_and_the_chunked_loss_and_prices_them_apart():
  """The candidates cover every remat policy with and without the chunked loss at the config's
  tokens per step; analytically the chunked loss holds fewer logits bytes and adds the head's
  recomputed forward (2VC a token), and a policy that keeps more recomputes less than "full" (with
  splash, dots_no_batch+attn_out as little as none)."""
  import dataclasses
  from gptjax.config import REMAT_POLICIES
  from gptjax.planner import options as options_lib
  from gptjax.planner import roofline, search
  config = presets.load("350M_1024")
  candidates, _ = search.candidates(config, targets.parse_target("tpu-v5e-1"))
  seen = {(c.remat, c.loss_chunk_tokens) for c in candidates}
  assert seen == {(p, n) for p in REMAT_POLICIES for n in (0, search.LOSS_CHUNK_TOKENS)}
  assert all(c.batch_size * c.grad_accum_steps == 12 for c in candidates)
  model = ModelConfig.from_config(config).for_platform("tpu")
  plain = options_lib.step_options(config, "tpu")
  chunked = dataclasses.replace(plain, loss_chunk_tokens=4096)
  tokens = config.batch_size * config.block_size
  assert (memory_model.activation_terms(model, chunked, tokens)["logits"]
          < memory_model.activation_terms(model, plain, tokens)["logits"] / 2)
  assert (roofline.step_flops(config, model, chunked) -
          roofline.step_flops(config, model, plain) == 2 * config.vocab_size * config.n_embd *
          tokens)
  flops = {
      policy: roofline.step_flops(config, model, dataclasses.replace(plain, remat=policy))
      for policy in REMAT_POLICIES
  }
  assert all(flops["none"] <= flops[p] < flops["full"]
             for p in REMAT_POLICIES
             if p not in ("none", "full")), flops
