"""Sharded and multi-host training on fake CPU devices (8 per process, set in a subprocess)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from gptjax import sharding
from gptjax.config import validate
from gptjax.errors import ConfigError

from conftest import REPO_ROOT, TEXT, assert_user_error, damage, read_metrics, run_module

EIGHT_DEVICES = {
    "XLA_FLAGS": "--xla_force_host_platform_device_count=8 "
                 "--xla_backend_optimization_level=0"
}


def run_worker(scenario, tmp_path):
  (tmp_path / "out").mkdir(exist_ok=True)
  result = run_module(os.path.join("tests", "sharding_worker.py"),
                      scenario,
                      str(tmp_path),
                      env=EIGHT_DEVICES,
                      timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  [line] = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
  return json.loads(line[len("RESULT "):])


@pytest.mark.slow
def test_one_step_on_every_mesh_equals_the_single_device_step(tmp_path):
  result = run_worker("step", tmp_path)
  assert len(result) == 8 and "(2, 2, 2) dropout 0.0 scan" in result
  for mesh, r in result.items():
    assert r["init_difference"] == 0.0, mesh  # born sharded, the same values
    # Pure data parallelism without dropout all-reduces one flat gradient buffer; all else is SPMD.
    assert r["flat_all_reduce"] == (mesh
                                    in ("(8, 1, 1) dropout 0.0", "(2, 1, 1) dropout 0.0")), mesh
    np.testing.assert_allclose(r["loss"], r["reference_loss"], rtol=1e-6, err_msg=mesh)
    np.testing.assert_allclose(r["grad_norm"], r["reference_grad_norm"], rtol=1e-5, err_msg=mesh)
    assert r["param_difference"] < 2e-6, mesh  # float32 rounding of sharded reductions
    assert r["update_size"] > 5e-4  # ... against an update that really moved the params


@pytest.mark.slow
def test_fused_attention_under_a_mesh_equals_the_single_device_einsum_step(tmp_path):
  """Splash (interpret mode) under shard_map over batch and heads, and inside the flat
  all-reduce's shard_map: the one-device einsum step's loss and update."""
  result = run_worker("fused", tmp_path)
  assert result["(4, 1, 1)"]["flat_all_reduce"] and not result["(1, 4, 2)"]["flat_all_reduce"]
  for mesh, r in result.items():
    np.testing.assert_allclose(r["loss"], r["reference_loss"], rtol=1e-6, err_msg=mesh)
    assert r["param_difference"] < 2e-6, mesh


@pytest.mark.slow
def test_a_modern_model_sharded_equals_the_single_device_step(tmp_path):
  """RoPE + RMSNorm + SwiGLU + qk_norm + GQA + an untied, soft-capped head, with Muon, and with
  AdamW, dropout and a chunked loss: the same init, loss, gradient norm and update on meshes
  that shard the batch, the weights (fsdp), the heads, key/value heads and vocabulary (tensor)."""
  result = run_worker("modern", tmp_path)
  assert len(result) == 6
  for mesh, r in result.items():
    assert r["init_difference"] == 0.0, mesh
    np.testing.assert_allclose(r["loss"], r["reference_loss"], rtol=1e-6, err_msg=mesh)
    np.testing.assert_allclose(r["grad_norm"], r["reference_grad_norm"], rtol=1e-5, err_msg=mesh)
    # AdamW's first update is about g / |g| per entry: the SwiGLU kernels' smallest gradients turn
    # the float32 rounding of sharded sums into ~3e-6 of a 1e-3 update (Muon's: < 1e-7).
    assert r["param_difference"] < (2e-6 if "muon" in mesh else 5e-6), mesh
    assert r["update_size"] > 5e-4, mesh


@pytest.mark.slow
def test_fsdp_really_shards_params_and_optimizer_state(tmp_path):
  result = run_worker("shards", tmp_path)
  for part in ("params", "opt_state"):
    rows = result[part]
    assert rows
    for row in rows:
      if "fsdp" in row["spec"]:
        assert row["shard_sizes"] == [row["size"] // 8], row
    sharded = sum(row["size"] for row in rows if "fsdp" in row["spec"])
    assert sharded == sum(row["size"] for row in rows)  # every tensor has an `embed` axis here
  assert len(result["opt_state"]) == 2 * len(result["params"])  # AdamW's mu and nu


@pytest.mark.slow
def test_muon_sharded_equals_unsharded_and_its_momentum_is_sharded(tmp_path):
  result = run_worker("muon", tmp_path)
  for mesh, r in result.items():
    assert r["param_difference"] < 2e-6, mesh  # float32 rounding of sharded reductions
    assert r["update_size"] > 1e-3, mesh  # ... against updates that really moved the params
  # fsdp=8: every moment (AdamW's two, Muon's one) is split 8 ways along `embed`.
  assert all(shards == [size // 8] for size, shards in result["(1, 8, 1)"]["moments"])


@pytest.mark.slow
def test_checkpoint_restores_onto_other_meshes_and_training_continues(tmp_path):
  result = run_worker("restore", tmp_path)
  for target, r in result["restored"].items():
    assert r["params"] == 0.0 and r["shardings_match_target"], target
  assert result["restored"]["1 device"]["devices"] == 1
  losses = result["losses"]
  assert len(losses["moved"]) == len(losses["straight"]) == 8
  np.testing.assert_allclose(losses["moved"], losses["straight"], rtol=1e-5)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def train_args(out_dir):
  return [
      "-m", "gptjax.train", "--config=tiny_char", "--config.max_iters=4",
      "--config.eval_interval=2", "--config.eval_iters=2", "--config.log_interval=1",
      "--config.dropout=0.1", f"--config.out_dir={out_dir}"
  ]


def train_two_processes(out_dir, *overrides):
  """`python -m gptjax.train` as two processes on localhost, 2 CPU devices each."""
  port = free_port()
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_backend_optimization_level=0"}
  workers = [
      subprocess.Popen([
          sys.executable, *train_args(out_dir), "--config.cpu_devices=2", *overrides,
          f"--config.distributed.coordinator_address=127.0.0.1:{port}",
          "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"
      ],
                       cwd=REPO_ROOT,
                       env=env,
                       stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE,
                       text=True) for i in range(2)
  ]
  outputs = [worker.communicate(timeout=600) for worker in workers]
  for worker, (stdout, stderr) in zip(workers, outputs):
    assert worker.returncode == 0, stderr[-4000:]
  return outputs


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_past_a_damaged_checkpoint(tmp_path):
  """Two processes log the losses of one single-device run; resumed after their latest checkpoint
  is damaged, both restore the one before (set aside once, by process 0) and log the same again."""
  outputs = train_two_processes(tmp_path / "multi")
  assert "fsdp': 4" in outputs[0][0]  # one mesh over both processes' devices
  assert "step 4" in outputs[0][0]
  assert "gptjax" not in outputs[1][0] and "step " not in outputs[1][0]  # only process 0 logs
  single = run_module(*train_args(tmp_path / "single"))
  assert single.returncode == 0, single.stderr[-4000:]
  multi, one = (read_metrics(tmp_path / "multi" / "tiny_char"),
                read_metrics(tmp_path / "single" / "tiny_char"))
  assert [r["step"] for r in multi] == [1, 2, 3, 4]
  for key in ("train_loss", "grad_norm"):
    np.testing.assert_allclose([r[key] for r in multi], [r[key] for r in one],
                               rtol=2e-5,
                               err_msg=key)
  np.testing.assert_allclose([r["val_loss"] for r in multi if "val_loss" in r],
                             [r["val_loss"] for r in one if "val_loss" in r],
                             rtol=2e-5)

  checkpoints = tmp_path / "multi" / "tiny_char" / "checkpoints"
  damage(checkpoints / "4")
  outputs = train_two_processes(tmp_path / "multi", "--config.max_iters=6")
  [note] = [line for line in outputs[0][1].splitlines() if "damaged" in line]
  assert "step 4" in note and "using step 2" in note, outputs[0][1][-3000:]
  assert sorted(os.listdir(checkpoints)) == ["2", "4", "4.damaged", "6"]
  resumed = read_metrics(tmp_path / "multi" / "tiny_char")
  assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose([r["train_loss"] for r in resumed[2:4]],
                             [r["train_loss"] for r in multi[2:4]],
                             rtol=2e-5)


@pytest.mark.slow
def test_two_cpu_devices_train_hundreds_of_steps_between_logs(tmp_path):
  """With nothing logged for 300 steps, the loop must not queue steps ahead on CPU devices.

  Regression: XLA's CPU devices deadlocked in the gradient all-reduce when several data-parallel
  steps were in flight (jax 0.10.2; XLA aborts after 40 s, "Expected 2 threads to join the
  rendezvous"), which a --config.log_interval of a few hundred steps triggered on 2 cores.
  """
  input_file = tmp_path / "input.txt"
  input_file.write_text(TEXT, encoding="utf-8")
  result = run_module("-m",
                      "gptjax.train",
                      "--config=recipes/shakespeare_char_cpu",
                      f"--config.input_file={input_file}",
                      f"--config.out_dir={tmp_path / 'out'}",
                      "--config.cpu_devices=2",
                      "--config.mesh.data=-1",
                      "--config.mesh.fsdp=1",
                      "--config.max_iters=300",
                      "--config.log_interval=1000",
                      "--config.eval_interval=1000",
                      "--config.eval_iters=2",
                      env={"XLA_FLAGS": ""})  # optimised code: steps as fast as a user's
  assert result.returncode == 0, result.stderr[-4000:]
  records = read_metrics(tmp_path / "out" / "shakespeare_char_cpu")
  assert [r["step"] for r in records] == [1, 300]
  assert records[-1]["train_loss"] < records[0]["train_loss"] - 1.0


def test_mesh_product_must_match_the_devices(tiny):
  with pytest.raises(ConfigError, match="mesh.*2 devices.*1 are present"):
    sharding.make_mesh(tiny(mesh=dict(data=2, fsdp=1, tensor=1)), jax.devices()[:1])
  with pytest.raises(ConfigError, match="not a multiple of 3"):
    sharding.mesh_shape(tiny(mesh=dict(data=3, fsdp=-1, tensor=1)), 8)
  assert sharding.mesh_shape(tiny(mesh=dict(data=2, fsdp=-1, tensor=2)), 8) == (2, 2, 2)


def test_heads_must_divide_over_tensor(tiny):
  with pytest.raises(ConfigError, match="n_head=2 is not divisible by mesh.tensor=4"):
    validate(tiny(mesh=dict(data=1, fsdp=-1, tensor=4)))


def test_global_batch_must_divide_over_data_and_fsdp(tiny):
  with pytest.raises(ConfigError, match="batch_size.*6.*data x fsdp = 4"):
    sharding.validate_for_mesh(tiny(batch_size=6), (2, 2, 1))


def test_vocab_must_divide_where_the_rules_shard_it(tiny):
  with pytest.raises(ConfigError, match="vocab_size.*257.*mesh.tensor=2"):
    sharding.validate_for_mesh(tiny(vocab_size=257), (1, 1, 2))


def test_cli_mesh_error_is_one_clear_line(tmp_path):
  result = run_module("-m", "gptjax.train", "--config=tiny_char", "--config.mesh.data=2",
                      "--config.mesh.fsdp=1", f"--config.out_dir={tmp_path}")
  assert_user_error(result, "mesh", "data=2")
