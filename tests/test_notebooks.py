"""The Colab notebooks, executed top to bottom on the CPU as a Colab user runs them.

Each is run by nbclient in a real Jupyter kernel with its `parameters` cell overridden by a cell
tagged `injected-parameters` (papermill's convention): a tiny run, GPTJAX_SOURCE the checkout under
test (already importable from it, so the notebook installs nothing) and RUN_ROOT a temporary
folder (outside Colab the Drive cell steps aside). The train notebook is killed mid-training, as a
disconnect would, and run again: it must resume and finish. The fine-tune notebook starts from a
small random GPT-2 directory made here with transformers (CI has no network).
"""

from __future__ import annotations

import ast
import importlib.util
import glob
import json
import os
import re
import signal
import threading
import time

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, DeadKernelError

from gptjax.config import get_base_config

from conftest import REPO_ROOT, TEXT, read_metrics

NOTEBOOKS = sorted(glob.glob(os.path.join(REPO_ROOT, "notebooks", "*.ipynb")))
TRAIN_NOTEBOOK = os.path.join(REPO_ROOT, "notebooks", "train_tpu_colab.ipynb")
FINETUNE_NOTEBOOK = os.path.join(REPO_ROOT, "notebooks", "finetune_gpt2_colab.ipynb")
REQUIRED_PARAMETERS = {
    TRAIN_NOTEBOOK: {"GPTJAX_SOURCE", "PRESET", "INPUT", "MAX_ITERS", "RUN_ROOT"}
}
REQUIRED_PARAMETERS[FINETUNE_NOTEBOOK] = REQUIRED_PARAMETERS[TRAIN_NOTEBOOK] | {"INIT_FROM"}
# A tiny_char run that trains, evaluates and checkpoints in seconds on 2 cores.
TINY_FLAGS = ("--config.n_layer=2 --config.block_size=64 --config.batch_size=8 "
              "--config.eval_interval=10 --config.eval_iters=2 --config.log_interval=5")
TINY_ITERS = 40
TRAIN_TITLE = "Train (resumes from the last checkpoint)"


def code_cells(path):
  with open(path, encoding="utf-8") as f:
    notebook = json.load(f)
  assert notebook["nbformat"] == 4
  return [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]


def code_of(path):
  return "\n".join("".join(cell["source"]) for cell in code_cells(path))


def test_there_are_the_train_and_finetune_notebooks():
  assert set(REQUIRED_PARAMETERS) <= set(NOTEBOOKS)


def test_notebook_commands_use_real_commands_and_config_fields():
  fields = set(get_base_config().keys())
  for path in NOTEBOOKS:
    code = code_of(path)
    commands = re.findall(r"-m (gptjax\.\w+)", code)
    assert {"gptjax.train", "gptjax.sample"} <= set(commands), (path, commands)
    for command in commands:
      assert importlib.util.find_spec(command) is not None, (path, command)
    for field in re.findall(r"--config\.(\w+)", code):
      assert field in fields, (path, field)
    for preset in re.findall(r'PRESET = "([\w-]+)"', code):
      assert os.path.isfile(os.path.join(REPO_ROOT, "configs", f"{preset}.py")), preset


@pytest.mark.parametrize("path", sorted(REQUIRED_PARAMETERS), ids=os.path.basename)
def test_first_code_cell_is_the_parameters_and_no_cell_imports_jax(path):
  cells = code_cells(path)
  assert cells[0]["metadata"].get("tags") == ["parameters"]
  assigned = {
      target.id
      for node in ast.parse("".join(cells[0]["source"])).body
      for target in getattr(node, "targets", [])
      if isinstance(target, ast.Name)
  }
  assert REQUIRED_PARAMETERS[path] <= assigned, REQUIRED_PARAMETERS[path] - assigned
  for cell in cells:  # libtpu lets one process own the chips: the kernel must not take them
    assert not re.search(r"^\s*(import|from) (jax|gptjax|flax)\b", "".join(cell["source"]),
                         re.MULTILINE), cell["source"]


# --- executing them -------------------------------------------------------------------------------


@pytest.fixture
def kernel_env(monkeypatch):
  """The kernel and its commands import the checkout under test (CI installs it editable; here
  it may be installed from elsewhere), so the notebook's install cell finds it and installs
  nothing into the environment."""
  monkeypatch.setenv(
      "PYTHONPATH",
      os.pathsep.join([REPO_ROOT] +
                      [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))


def with_parameters(path, **parameters):
  """The notebook with a cell tagged `injected-parameters` after its `parameters` cell."""
  notebook = nbformat.read(path, as_version=4)
  index = next(
      i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
  source = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
  notebook.cells.insert(
      index + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
  # A last cell that reports whether the kernel itself ever imported jax.
  notebook.cells.append(
      nbformat.v4.new_code_cell(
          'import sys\nprint("jax imported in the kernel:", "jax" in sys.modules)'))
  return notebook


def client_for(notebook, workdir) -> NotebookClient:
  return NotebookClient(notebook,
                        timeout=300,
                        kernel_name="python3",
                        resources={"metadata": {
                            "path": str(workdir)
                        }})


def text_of(cell) -> str:
  """Everything a code cell printed: its streams, and its error as the user sees it."""
  parts = []
  for output in cell.get("outputs", []):
    if output.output_type == "stream":
      parts.append(output.text)
    elif output.output_type == "error":
      parts.append("\n".join(output.traceback))
  return "".join(parts)


def cell_titled(notebook, title: str):
  """The code cell with the Colab form title `title`."""
  line = re.compile(rf"^# @title {re.escape(title)}$", re.MULTILINE)
  return next(
      cell for cell in notebook.cells if cell.cell_type == "code" and line.search(cell.source))


def committed_steps(run_dir) -> list[int]:
  directory = os.path.join(run_dir, "checkpoints")
  return sorted(
      int(name)
      for name in (os.listdir(directory) if os.path.isdir(directory) else [])
      if name.isdigit())


def kill(pid: int) -> None:
  try:
    os.kill(pid, signal.SIGKILL)
  except ProcessLookupError:
    pass


def execute_until_a_checkpoint_then_disconnect(client: NotebookClient, run_dir) -> None:
  """Executes the notebook in a thread; once the training has committed a checkpoint, kills the
  kernel and the training process with SIGKILL, as a lost Colab runtime does."""
  failure = []

  def execute():
    try:
      client.execute()
    except (DeadKernelError, CellExecutionError, RuntimeError) as e:  # the kernel is killed
      failure.append(e)

  thread = threading.Thread(target=execute, daemon=True)
  thread.start()
  lock_path, trainer_pid, deadline = os.path.join(run_dir, "lock"), None, time.time() + 240
  while not committed_steps(run_dir):
    assert thread.is_alive(), "the notebook ended before its training saved a checkpoint"
    assert time.time() < deadline, "no checkpoint within 240 s"
    if trainer_pid is None and os.path.isfile(lock_path):
      holder = open(lock_path).read().strip()
      trainer_pid = json.loads(holder)["pid"] if holder.endswith("}") else None
    time.sleep(0.02)
  kill(client.km.provisioner.pid)  # the kernel
  if trainer_pid is None:
    trainer_pid = json.loads(open(lock_path).read())["pid"]
  kill(trainer_pid)
  thread.join(timeout=60)
  assert not thread.is_alive() and failure, "the notebook was not stopped"


def test_placeholder_source_stops_with_one_sentence(tmp_path, kernel_env):
  for source in ("", "https://github.com/<you>/gptjax.git"):
    client = client_for(
        with_parameters(TRAIN_NOTEBOOK, GPTJAX_SOURCE=source, RUN_ROOT=str(tmp_path / "runs")),
        tmp_path)
    with pytest.raises(CellExecutionError):
      client.execute()
    errors = [
        output for cell in client.nb.cells for output in cell.get("outputs", [])
        if output.output_type == "error"
    ]
    assert len(errors) == 1 and len(errors[0].traceback) == 1, errors
    assert errors[0].traceback[0].startswith(f"GPTJAX_SOURCE is {source!r}: set it in the "
                                             f"Parameters cell"), errors[0].traceback
    assert not os.path.exists(tmp_path / "runs")


@pytest.mark.notebook
@pytest.mark.slow
def test_train_notebook_resumes_after_a_disconnect_and_finishes(tmp_path, kernel_env):
  input_file = tmp_path / "input.txt"
  input_file.write_text(TEXT * 3, encoding="utf-8")
  notebook = with_parameters(TRAIN_NOTEBOOK,
                             GPTJAX_SOURCE=REPO_ROOT,
                             PRESET="tiny_char",
                             INPUT=str(input_file),
                             MAX_ITERS=TINY_ITERS,
                             RUN_ROOT=str(tmp_path / "runs"),
                             EXTRA_FLAGS=TINY_FLAGS,
                             PROMPT="First Citizen:",
                             SAMPLE_TOKENS=100)
  run_dir = tmp_path / "runs" / "tiny_char"

  first = client_for(notebook, tmp_path)
  execute_until_a_checkpoint_then_disconnect(first, run_dir)
  install = text_of(cell_titled(first.nb, "Install gptjax"))
  assert f"gptjax is already installed from {REPO_ROOT}: nothing to install." in install
  plan = text_of(cell_titled(first.nb, "Chips and the fit planner's verdict"))
  assert "on local: 1 x cpu" in plan and "check: OK, GPT-Tiny-Char will run on local" in plan, plan
  killed_at = read_metrics(run_dir)[-1]["step"]
  assert 0 < killed_at < TINY_ITERS, killed_at

  second = client_for(
      with_parameters(TRAIN_NOTEBOOK,
                      GPTJAX_SOURCE=REPO_ROOT,
                      PRESET="tiny_char",
                      INPUT=str(input_file),
                      MAX_ITERS=TINY_ITERS,
                      RUN_ROOT=str(tmp_path / "runs"),
                      EXTRA_FLAGS=TINY_FLAGS,
                      PROMPT="First Citizen:",
                      SAMPLE_TOKENS=100), tmp_path)
  second.execute()
  training = text_of(cell_titled(second.nb, TRAIN_TITLE))
  resumed = re.search(r"resuming from step (\d+)", training)
  assert resumed and 0 < int(resumed.group(1)) <= killed_at, training
  assert f"done: step {TINY_ITERS}" in training, training
  assert "(it resumes from its last checkpoint)" in text_of(
      cell_titled(second.nb, "Where runs live"))
  steps = [record["step"] for record in read_metrics(run_dir)]
  assert steps == sorted(set(steps)) and steps[-1] == TINY_ITERS, steps
  plot = cell_titled(second.nb, "Loss curve")
  assert any("image/png" in output.get("data", {}) for output in plot.outputs), plot.outputs
  sample = text_of(cell_titled(second.nb, "Sample"))
  assert "First Citizen:" in sample and len(sample.split("First Citizen:", 1)[1]) >= 50, sample
  assert "jax imported in the kernel: False" in text_of(second.nb.cells[-1])


def make_random_gpt2(directory) -> None:
  """A 2-layer GPT-2 with GPT-2's vocabulary, random weights, as save_pretrained writes it."""
  transformers = pytest.importorskip("transformers")
  config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=32)
  transformers.GPT2LMHeadModel(config).save_pretrained(directory)


@pytest.mark.notebook
@pytest.mark.slow
def test_finetune_notebook_samples_before_and_after_and_exports(tmp_path, kernel_env):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  gpt2_dir, input_file = tmp_path / "random-gpt2", tmp_path / "input.txt"
  make_random_gpt2(gpt2_dir)
  input_file.write_text(TEXT, encoding="utf-8")
  client = client_for(
      with_parameters(
          FINETUNE_NOTEBOOK,
          GPTJAX_SOURCE=REPO_ROOT,
          PRESET="gpt2",
          INIT_FROM=str(gpt2_dir),
          INPUT=str(input_file),
          MAX_ITERS=6,
          RUN_ROOT=str(tmp_path / "runs"),
          EXTRA_FLAGS="--config.batch_size=2 --config.grad_accum_steps=1 --config.eval_interval=3 "
          "--config.eval_iters=1 --config.warmup_iters=1 --config.log_interval=1 "
          "--config.learning_rate=1e-3",
          PROMPT="First Citizen:",
          SAMPLE_TOKENS=40), tmp_path)
  client.execute()
  before = text_of(cell_titled(client.nb, "Sample before"))
  after = text_of(cell_titled(client.nb, "Sample after"))
  for sample in (before, after):
    assert "First Citizen:" in sample and len(sample.split("First Citizen:", 1)[1]) > 50, sample
  training = text_of(cell_titled(client.nb, "Fine-tune (resumes from the last checkpoint)"))
  assert "done: step 6" in training and "resuming" not in training, training
  plot = cell_titled(client.nb, "Loss curve")
  assert any("image/png" in output.get("data", {}) for output in plot.outputs), plot.outputs
  assert "jax imported in the kernel: False" in text_of(client.nb.cells[-1])

  exported = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "runs" / "gpt2_finetuned_hf")
  initial = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir)
  assert exported.config.n_layer == 2 and exported.config.vocab_size == 50257
  tokens = torch.arange(16)[None]
  with torch.no_grad():
    logits, initial_logits = exported(tokens).logits, initial(tokens).logits
  assert torch.isfinite(logits).all()
  assert not torch.allclose(logits, initial_logits), "the export holds the weights fine-tuned"


def test_shared_cells_are_the_same_in_both_notebooks():
  """Each notebook stands alone on Colab, so they repeat the install and plot cells: kept equal."""

  def titled(path):
    return {
        cell["source"][0]: "".join(cell["source"])
        for cell in code_cells(path)
        if cell["source"] and cell["source"][0].startswith("# @title")
    }

  train, finetune = titled(TRAIN_NOTEBOOK), titled(FINETUNE_NOTEBOOK)
  for title in ("# @title Install gptjax\n", "# @title Loss curve\n"):
    assert train[title] == finetune[title], title
