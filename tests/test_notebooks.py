"""The Colab notebooks: valid notebooks whose commands name real presets, tools and flags."""

from __future__ import annotations

import glob
import json
import os
import re

from gptjax.config import get_base_config

from conftest import REPO_ROOT

NOTEBOOKS = sorted(glob.glob(os.path.join(REPO_ROOT, "notebooks", "*.ipynb")))


def code_of(path):
  with open(path, encoding="utf-8") as f:
    notebook = json.load(f)
  assert notebook["nbformat"] == 4
  return "\n".join("".join(cell["source"]) for cell in notebook["cells"]
                   if cell["cell_type"] == "code")


def test_there_is_a_tpu_notebook():
  assert any("tpu" in os.path.basename(path) for path in NOTEBOOKS)


def test_notebook_commands_use_real_tools_and_config_fields():
  fields = set(get_base_config().keys())
  for path in NOTEBOOKS:
    code = code_of(path)
    for tool in re.findall(r"python (tools/\w+\.py)", code):
      assert os.path.isfile(os.path.join(REPO_ROOT, tool)), tool
    for field in re.findall(r"--config\.(\w+)", code):
      assert field in fields, (path, field)
    for preset in re.findall(r'PRESET = "(\w+)"', code):
      assert os.path.isfile(os.path.join(REPO_ROOT, "configs", f"{preset}.py")), preset
