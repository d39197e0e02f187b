"""Lists the model presets in configs/ with exact parameter counts, or details one of them.

  python tools/show_configs.py                              # table of every preset
  python tools/show_configs.py --markdown                   # the same table in markdown (README)
  python tools/show_configs.py --config_file configs/150M.py
"""

from __future__ import annotations

import argparse
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # `import gptjax` without `pip install -e .`
  sys.path.insert(0, REPO_ROOT)

from gptjax import presets  # noqa: E402
from gptjax.errors import EXIT_USER_ERROR, exit_on_user_error  # noqa: E402


class _ArgumentParser(argparse.ArgumentParser):

  def error(self, message):
    print(f"error: {message} (see --help)", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def parse_args(argv):
  parser = _ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config_file", help="a preset (.py or seed-style .json) to show in detail")
  parser.add_argument("--configs_dir", default=os.path.join(REPO_ROOT, "configs"),
                      help="directory of presets to list (default: the repository's configs/)")
  parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
  return parser.parse_args(argv)


@exit_on_user_error
def main(argv=None):
  args = parse_args(argv)
  if args.config_file:
    print(presets.format_preset_details(args.config_file, presets.load_validated(args.config_file)))
    return
  rows = presets.preset_table(args.configs_dir)
  print(presets.format_preset_markdown(rows) if args.markdown else presets.format_preset_table(rows))


if __name__ == "__main__":
  main()
