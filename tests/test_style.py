"""The code follows its formatter: yapf's Google style with 2-space indents and 100 columns (the
[yapf] section of setup.cfg). Fix a failure with `yapf -ir gptjax tests tools`."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO_ROOT


def test_the_code_is_formatted_by_yapf():
  result = subprocess.run([
      sys.executable, "-m", "yapf", "--diff", "--recursive", "--parallel", "gptjax", "tests",
      "tools"
  ],
                          cwd=REPO_ROOT,
                          capture_output=True,
                          text=True,
                          timeout=600)
  assert result.returncode == 0 and not result.stdout, (
      "not formatted (run `yapf -ir gptjax tests tools`):\n" + result.stdout[-5000:] +
      result.stderr[-2000:])
