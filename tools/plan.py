"""The fit planner as a script: tools/plan.py takes what `python -m gptjax.plan` takes.

  python tools/plan.py --config=configs/500M_1024.py --target=tpu-v5e-1
  python tools/plan.py --config=configs/500M_1024.py --target=gpu-a100-40gb --search
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gptjax import plan  # noqa: E402

if __name__ == "__main__":
  plan.cli_main()
