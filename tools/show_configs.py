"""Lists the model presets in configs/ with exact parameter counts, or details one of them.

  python tools/show_configs.py                              # table of every preset
  python tools/show_configs.py --markdown                   # the same table in markdown (README)
  python tools/show_configs.py --config_file configs/150M.py
  python tools/show_configs.py --memory                     # GiB per device on common GPUs / TPUs
  python tools/show_configs.py --memory --refresh           # compile them anew (about an hour)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The compiled memory table: --memory prints it, --memory --refresh compiles it anew.
MEMORY_TABLE = os.path.join(REPO_ROOT, "docs", "memory_table.json")
if REPO_ROOT not in sys.path:  # `import gptjax` without `pip install -e .`
  sys.path.insert(0, REPO_ROOT)

from gptjax import presets  # noqa: E402
from gptjax.errors import EXIT_USER_ERROR, UserError, exit_on_user_error  # noqa: E402


class _ArgumentParser(argparse.ArgumentParser):

  def error(self, message):
    print(f"error: {message} (see --help)", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def parse_args(argv):
  parser = _ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config_file", help="a preset (.py or nanoGPT-style .json) to show in detail")
  parser.add_argument("--configs_dir", default=os.path.join(REPO_ROOT, "configs"),
                      help="directory of presets to list (default: the repository's configs/)")
  parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
  parser.add_argument("--memory", action="store_true",
                      help="training and sampling memory per device of every preset on common "
                           "GPUs and TPUs, as XLA compiles it (from docs/memory_table.json), and "
                           "what fits where the shipped settings do not")
  parser.add_argument("--refresh", action="store_true",
                      help="with --memory: compile every cell anew (libtpu and jax's CUDA "
                           "plugin; about an hour on 2 cores) and rewrite docs/memory_table.json")
  parser.add_argument("--analytic", action="store_true",
                      help="with --memory: the planner's analytic model instead (seconds)")
  parser.add_argument("--targets", help="comma-separated planner targets for --memory "
                      "--analytic/--refresh (default: 24/40/80 GB GPUs, tpu-v5e-1, tpu-v5e-8, "
                      "tpu-v4-8)")
  return parser.parse_args(argv)


def memory_table(args) -> list[dict]:
  """The rows of --memory: read from MEMORY_TABLE, or computed (--refresh, --analytic)."""
  if not (args.refresh or args.analytic):
    if not os.path.isfile(MEMORY_TABLE):
      raise UserError(f"{MEMORY_TABLE} is missing. Fix: --memory --refresh compiles it, or "
                      f"--memory --analytic estimates it.")
    with open(MEMORY_TABLE) as f:
      return json.load(f)["rows"]
  from gptjax import targets
  targets.compile_only_process()  # nothing runs here: keep JAX off any accelerator
  rows = presets.memory_rows(args.configs_dir, args.targets and args.targets.split(","),
                             compile=args.refresh,
                             log=lambda line: print(line, file=sys.stderr, flush=True))
  if args.refresh:
    rows = _store_memory_table(rows)
  return rows


def _store_memory_table(rows: list[dict]) -> list[dict]:
  """Writes the refreshed columns into MEMORY_TABLE, keeping the other targets' columns (several
  --refresh --targets=... runs may share the file: it is locked while it is rewritten)."""
  import fcntl
  import jax
  from gptjax import targets
  with open(MEMORY_TABLE, "a+") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    f.seek(0)
    text = f.read()
    old = {row["file"]: row for row in json.loads(text)["rows"]} if text.strip() else {}
    for row in rows:
      cells = {**old.get(row["file"], {}).get("targets", {}), **row["targets"]}
      row["targets"] = {name: cells[name] for name in targets.COMMON_TARGETS if name in cells}
    f.seek(0)
    f.truncate()
    json.dump(dict(about=f"python tools/show_configs.py --memory --refresh, jax "
                         f"{jax.__version__}, {datetime.date.today()}", rows=rows), f, indent=1)
  return rows


@exit_on_user_error
def main(argv=None):
  args = parse_args(argv)
  if args.config_file:
    print(presets.format_preset_details(args.config_file, presets.load_validated(args.config_file)))
    return
  if args.memory:
    print(presets.format_memory_table(memory_table(args), markdown=args.markdown))
    return
  rows = presets.preset_table(args.configs_dir)
  print(presets.format_preset_markdown(rows) if args.markdown else presets.format_preset_table(rows))


if __name__ == "__main__":
  main()
