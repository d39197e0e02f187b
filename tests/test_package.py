"""gptjax as a package: the wheel works outside the checkout, commands start quietly, and a machine
whose accelerator JAX cannot use is told what to install."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, TEXT, assert_user_error, run_module

# What the accelerator plugins print when they find no hardware (see gptjax/devices.py): none of it
# may reach a user.
PLUGIN_NOISE = re.compile(r"cudart_stub|Could not find cuda drivers|Jax plugin configuration error|"
                          r"TPU_WORKER_HOSTNAMES|libtpu|absl::InitializeLog|InitGoogle|"
                          r"Traceback")
# A byte-level 1-layer run on the default corpus: seconds on a CPU.
QUICK_TRAIN = [
    "--config=tiny_char", "--config.max_iters=5", "--config.eval_interval=5",
    "--config.eval_iters=1", "--config.n_layer=1", "--config.batch_size=4",
    "--config.log_interval=1"
]


def without_platform_choice() -> dict:
  """The environment of a user's shell: JAX_PLATFORMS unset (tests set it), so that gptjax picks."""
  return {key: value for key, value in os.environ.items() if key != "JAX_PLATFORMS"}


def run(command: list[str], cwd, env=None, timeout=600) -> subprocess.CompletedProcess:
  return subprocess.run(command,
                        cwd=cwd,
                        capture_output=True,
                        text=True,
                        timeout=timeout,
                        env=env or without_platform_choice())


def assert_quiet(result, what: str) -> None:
  """Exit 0, and not one line of the plugins' no-hardware noise."""
  assert result.returncode == 0, (what, result.stdout[-2000:], result.stderr[-3000:])
  noise = [line for line in result.stderr.splitlines() if PLUGIN_NOISE.search(line)]
  assert not noise, (what, noise)


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
  """A fresh virtual environment (seeing this one's packages, so nothing is downloaded) with
  gptjax installed from its wheel; (its python, an empty working directory)."""
  root = tmp_path_factory.mktemp("wheel")
  built = run([
      sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
      str(root / "dist"), REPO_ROOT
  ],
              cwd=root)
  assert built.returncode == 0, built.stderr[-3000:]
  wheel, = glob.glob(str(root / "dist" / "gptjax-*.whl"))
  made = run([sys.executable, "-m", "venv", "--system-site-packages", str(root / "venv")], cwd=root)
  assert made.returncode == 0, made.stderr
  python = str(root / "venv" / "bin" / "python")
  installed = run([python, "-m", "pip", "install", "-q", "--no-deps", wheel], cwd=root)
  assert installed.returncode == 0, installed.stderr[-3000:]
  work = root / "empty"
  work.mkdir()
  return python, work


@pytest.mark.wheel
def test_the_wheel_works_from_an_empty_directory(wheel_env):
  python, work = wheel_env
  where = run([python, "-c", "import gptjax, sys; print(gptjax.__file__); print(sys.prefix)"],
              cwd=work)
  module_file, prefix = where.stdout.split()
  assert module_file.startswith(prefix) and REPO_ROOT not in module_file, where.stdout

  trained = run([python, "-m", "gptjax.train", *QUICK_TRAIN, "--config.out_dir=out"], cwd=work)
  assert_quiet(trained, "train")
  assert "done: step 5" in trained.stdout
  planned = run([
      python, "-m", "gptjax.plan", "--config=350M_1024", "--target=gpu-h100-80gb",
      "--method=analytic"
  ],
                cwd=work)
  assert_quiet(planned, "plan --method=analytic")
  assert "analytic model" in planned.stdout and "GiB" in planned.stdout
  searched = run([
      python, "-m", "gptjax.plan", "--config=350M_1024", "--target=gpu-h100-80gb",
      "--method=analytic", "--search"
  ],
                 cwd=work)
  assert_quiet(searched, "plan --method=analytic --search")
  assert "python -m gptjax.train --config=350M_1024" in searched.stdout
  sampled = run([
      python, "-m", "gptjax.sample", "--run_dir=out/tiny_char", "--prompt=def ",
      "--max_new_tokens=20"
  ],
                cwd=work)
  assert_quiet(sampled, "sample")
  assert sampled.stdout.startswith("def ")
  shown = run([python, "-m", "gptjax.show_configs"], cwd=work)
  assert_quiet(shown, "show_configs")
  assert "350M_1024" in shown.stdout and "354,599,936" in shown.stdout
  counted = run([python, "-m", "gptjax.calculate_params", "--config=150M"], cwd=work)
  assert_quiet(counted, "calculate_params")
  assert "152,101,632" in counted.stdout and "(matches)" in counted.stdout
  assert sorted(os.listdir(work)) == ["out"]  # nothing written beside the run directory


def test_prepare_and_convert_start_quietly(tmp_path):
  text = tmp_path / "text.txt"
  text.write_text(TEXT, encoding="utf-8")
  prepared = run([
      sys.executable, "-m", "gptjax.prepare", f"--input={text}", "--tokenizer=bytes",
      "--val_fraction=0.1", f"--out_dir={tmp_path / 'data'}"
  ],
                 cwd=tmp_path)
  assert_quiet(prepared, "prepare")
  trained = run([
      sys.executable, "-m", "gptjax.train", *QUICK_TRAIN, f"--config.data_dir={tmp_path / 'data'}",
      "--config.block_size=16", f"--config.out_dir={tmp_path / 'out'}"
  ],
                cwd=tmp_path)
  assert_quiet(trained, "train on the prepared data")
  converted = run([
      sys.executable, "-m", "gptjax.convert", f"--run_dir={tmp_path / 'out' / 'tiny_char'}",
      f"--to_hf={tmp_path / 'hf'}"
  ],
                  cwd=tmp_path)
  assert_quiet(converted, "convert")
  assert os.path.isfile(tmp_path / "hf" / "config.json")


def fake_nvidia_smi(directory) -> dict:
  """An environment whose PATH has an nvidia-smi that lists a GPU, as on a GPU machine."""
  directory.mkdir(exist_ok=True)
  script = directory / "nvidia-smi"
  script.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\n")
  script.chmod(0o755)
  env = without_platform_choice()
  env["PATH"] = f"{directory}{os.pathsep}{env['PATH']}"
  return env


def test_a_gpu_that_jax_cannot_use_stops_training_with_the_install_fix(tmp_path):
  env = fake_nvidia_smi(tmp_path / "bin")
  out = tmp_path / "out"
  result = run([sys.executable, "-m", "gptjax.train", *QUICK_TRAIN, f"--config.out_dir={out}"],
               cwd=tmp_path,
               env=env)
  assert result.returncode == 2, result.stderr[-3000:]
  error = result.stderr.strip().splitlines()[-1]
  assert error.startswith("error: this machine has an NVIDIA GPU, but JAX sees only the CPU"), error
  assert 'pip install "jax[cuda12]"' in error and "--config.allow_cpu=True" in error
  assert not os.path.exists(out / "tiny_char" / "checkpoints")
  on_purpose = run([
      sys.executable, "-m", "gptjax.train", *QUICK_TRAIN, f"--config.out_dir={out}",
      "--config.allow_cpu=True"
  ],
                   cwd=tmp_path,
                   env=env)
  assert on_purpose.returncode == 0, on_purpose.stderr[-3000:]
  assert "done: step 5" in on_purpose.stdout
  with_platforms = run([
      sys.executable, "-m", "gptjax.train", *QUICK_TRAIN, f"--config.out_dir={out}",
      "--config.max_iters=6"
  ],
                       cwd=tmp_path,
                       env={
                           **env, "JAX_PLATFORMS": "cpu"
                       })
  assert with_platforms.returncode == 0, with_platforms.stderr[-3000:]
  assert "done: step 6" in with_platforms.stdout


def test_a_preset_name_works_from_any_directory(tmp_path):
  result = run_module("-m",
                      "gptjax.calculate_params",
                      "--config=recipes/shakespeare_char_cpu",
                      cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Layers (L)" in result.stdout
  assert_user_error(run_module("-m", "gptjax.train", "--config=tiny_chr", cwd=tmp_path),
                    "--config=tiny_chr: no preset of that name. Did you mean --config=tiny_char?")
