"""Run directories in a Cloud Storage bucket (gs://), against a local fake-gcs-server: train, kill
with SIGKILL, resume to the same losses bitwise, sample and evaluate from the bucket; a second writer is
refused by the lease; unsupported URLs are one clear error."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from conftest import assert_user_error, run_module
from gcs_emulator import fake_gcs

TRAIN = ("-m", "gptjax.train", "--config=tiny_char", "--config.n_layer=1", "--config.eval_iters=1",
         "--config.log_interval=1", "--config.max_iters=8", "--config.checkpoint_interval=2",
         "--config.eval_interval=4", "--config.dropout=0.1", "--config.compilation_cache_dir=")


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
  """The environment of a fresh emulated bucket "runs", alive for the module's tests."""
  log = tmp_path_factory.mktemp("gcs") / "fake-gcs-server.log"
  with fake_gcs("runs", str(log)) as env:
    yield dict(env, GPTJAX_LEASE_TTL_S="3", HOME=str(tmp_path_factory.mktemp("home")))


def gcs_script(env, script: str, path: str) -> str:
  """Runs `script` (google-cloud-storage, not gptjax's own store code) on `path` against the
  emulator; its standard output."""
  result = subprocess.run([sys.executable, "-c", script, path],
                          env={
                              **os.environ,
                              **env
                          },
                          capture_output=True,
                          text=True,
                          timeout=60)
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stdout


def read_object(env, path: str) -> str:
  """An object's text, read with google-cloud-storage (not gptjax's own store code)."""
  return gcs_script(
      env, "import sys; from google.cloud import storage; b, _, k = sys.argv[1][5:].partition('/');"
      "print(storage.Client().bucket(b).blob(k).download_as_text(), end='')", path)


def damage(env, step_dir: str) -> None:
  """Truncates every object of a checkpoint step's params to 10 bytes, as test_recovery does on a
  disk, with google-cloud-storage."""
  gcs_script(
      env, "import sys; from google.cloud import storage; b, _, k = sys.argv[1][5:].partition('/');"
      "bucket = storage.Client().bucket(b)\n"
      "for blob in bucket.list_blobs(prefix=k + '/params/'):\n"
      "  data = blob.download_as_bytes()\n"
      "  bucket.blob(blob.name).upload_from_string(data[:10]) if len(data) > 10 else None",
      step_dir)


def records(env, run_dir: str):
  return [json.loads(line) for line in read_object(env, f"{run_dir}/metrics.jsonl").splitlines()]


@pytest.mark.slow
def test_a_run_in_a_bucket_killed_with_sigkill_resumes_bitwise_and_samples(bucket, tmp_path):
  straight = run_module(*TRAIN,
                        "--config.out_dir=gs://runs/a",
                        "--config.model_name=straight",
                        cwd=tmp_path,
                        env=bucket)
  assert straight.returncode == 0, straight.stderr[-3000:]
  killed = [*TRAIN, "--config.out_dir=gs://runs/a", "--config.model_name=killed"]
  process = subprocess.Popen([sys.executable, *killed],
                             cwd=tmp_path,
                             stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL,
                             text=True,
                             env={
                                 **os.environ, "JAX_PLATFORMS": "cpu",
                                 "PYTHONUNBUFFERED": "1",
                                 **bucket
                             })
  for line in process.stdout:
    if line.startswith("step 5:"):  # the step-4 save is committed or being written
      process.send_signal(signal.SIGKILL)
      break
  process.wait(timeout=60)
  assert process.returncode == -signal.SIGKILL
  resumed = run_module(*killed, cwd=tmp_path, env=bucket)  # the dead holder's lease: taken over
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  # From step 4, or from step 2 when the kill came while step 4 was still being written (a save
  # starts once the one before it has committed, so step 2's had): a slow machine sees both.
  assert re.search(r"resuming from step [24]\b", resumed.stdout), resumed.stdout[-2000:]
  assert "taking over gs://runs/a/killed/lock" in resumed.stderr
  want, got = records(bucket, "gs://runs/a/straight"), records(bucket, "gs://runs/a/killed")
  assert [r["step"] for r in got] == list(range(1, 9))
  for key in ("train_loss", "grad_norm", "val_loss"):
    assert [r.get(key) for r in got] == [r.get(key) for r in want], key
  config = json.loads(read_object(bucket, "gs://runs/a/killed/config.json"))
  assert config["max_iters"] == 8 and read_object(bucket, "gs://runs/a/killed/lock") == ""
  assert json.loads(read_object(bucket, "gs://runs/a/killed/data.json"))["tokenizer"]

  sampled = [
      run_module("-m",
                 "gptjax.sample",
                 f"--run_dir=gs://runs/a/{name}",
                 "--max_new_tokens=8",
                 "--prompt=ab",
                 "--seed=3",
                 cwd=tmp_path,
                 env=bucket) for name in ("straight", "killed")
  ]
  for result in sampled:
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded checkpoint step 8" in result.stderr + result.stdout
  assert sampled[0].stdout == sampled[1].stdout and sampled[0].stdout.strip()
  (tmp_path / "input.txt").write_text("To be, or not to be, that is the question. " * 200)
  evaluated = [
      run_module("-m",
                 "gptjax.eval",
                 f"--run_dir=gs://runs/a/{name}",
                 *data,
                 "--json",
                 cwd=tmp_path,
                 env=bucket)
      for name in ("straight", "killed")
      for data in ((), ("--input_file=input.txt",))
  ]
  for result in evaluated:
    assert result.returncode == 0, result.stderr[-3000:]
  losses = [json.loads(result.stdout)["loss"] for result in evaluated]
  assert losses[0] == losses[2] and losses[1] == losses[3], losses  # the same weights: same loss
  exported = run_module("-m",
                        "gptjax.convert",
                        "--run_dir=gs://runs/a/killed",
                        f"--to_hf={tmp_path / 'hf'}",
                        cwd=tmp_path,
                        env=bucket)
  assert exported.returncode == 0, exported.stderr[-3000:]
  assert (tmp_path / "hf" / "config.json").is_file()

  # A damaged latest step in the bucket: the run resumes from the one before and sets it aside.
  damage(bucket, "gs://runs/a/straight/checkpoints/8")
  resumed = run_module(*TRAIN,
                       "--config.out_dir=gs://runs/a",
                       "--config.model_name=straight",
                       "--config.max_iters=10",
                       cwd=tmp_path,
                       env=bucket)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  [note] = [line for line in resumed.stderr.splitlines() if "is damaged" in line]
  assert "step 8" in note and "using step 6" in note and "8.damaged" in note, note
  assert "resuming from step 6" in resumed.stdout
  assert [r["step"] for r in records(bucket, "gs://runs/a/straight")] == list(range(1, 11))


@pytest.mark.slow
def test_a_second_writer_in_a_bucket_is_refused(bucket, tmp_path):
  holder = subprocess.Popen(
      [sys.executable, *TRAIN, "--config.max_iters=400", "--config.out_dir=gs://runs/b"],
      cwd=tmp_path,
      stdout=subprocess.PIPE,
      stderr=subprocess.DEVNULL,
      text=True,
      env={
          **os.environ, "JAX_PLATFORMS": "cpu",
          "PYTHONUNBUFFERED": "1",
          **bucket
      })
  try:
    for line in holder.stdout:
      if line.startswith("step 1:"):
        break
    second = run_module(*TRAIN, "--config.out_dir=gs://runs/b", cwd=tmp_path, env=bucket)
    assert_user_error(second, "gs://runs/b/tiny_char", "in use by another training")
  finally:
    holder.send_signal(signal.SIGINT)
    holder.wait(timeout=120)


def test_an_unsupported_url_is_one_clear_error(tmp_path):
  result = run_module("-m",
                      "gptjax.train",
                      "--config=tiny_char",
                      "--config.out_dir=s3://b/runs",
                      cwd=tmp_path)
  assert_user_error(result, "s3://", "gs://")
  assert os.listdir(tmp_path) == []  # nothing made, not even a local ./s3:/ directory


def test_a_lease_held_on_another_host_is_respected_while_renewed_and_taken_when_not(
    bucket, monkeypatch, capfd):
  """The lease's cross-host rule, with a second lease standing in for the other host: refused while
  its holder renews it; taken over (with a note) once it stopped renewing for ttl seconds; and the
  old holder, fenced, learns it lost the lease at its next renewal."""
  from gptjax.errors import UserError
  from gptjax.training import lease
  for key, value in bucket.items():
    monkeypatch.setenv(key, value)
  monkeypatch.setattr(lease.socket, "gethostname", lambda: "other-host")
  holder = lease.LeaseLock("gs://runs/c/tiny", ttl_s=1.5).acquire()
  monkeypatch.setattr(lease.socket, "gethostname", lambda: "this-host")
  with pytest.raises(UserError, match="in use by another training"):
    lease.LeaseLock("gs://runs/c/tiny", ttl_s=1.5).acquire()  # renewed every second meanwhile
  holder.stopped.set()  # the other host hangs: no more renewals
  holder.thread.join()
  successor = lease.LeaseLock("gs://runs/c/tiny", ttl_s=1.5).acquire()
  assert "taking over gs://runs/c/tiny/lock from pid" in capfd.readouterr().err
  assert not holder._write_if(b"late", holder.generation)  # the old holder is fenced
  successor.release()
  assert read_object(bucket, "gs://runs/c/tiny/lock") == ""
