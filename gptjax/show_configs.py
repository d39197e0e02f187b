"""The presets with their exact parameter counts, one in detail, or their memory on GPUs and TPUs:
`python -m gptjax.show_configs` (or gptjax-show-configs).

  python -m gptjax.show_configs                        # every shipped preset
  python -m gptjax.show_configs --markdown             # the same table in markdown (README)
  python -m gptjax.show_configs --config=150M          # one preset in detail (or a .py / .json)
  python -m gptjax.show_configs --config=150M --config.optimizer=muon   # ... and what Muon takes
  python -m gptjax.show_configs --memory               # GiB per device on common GPUs and TPUs
  python -m gptjax.show_configs --memory --analytic    # the planner's analytic model (seconds)
  python -m gptjax.show_configs --memory --refresh     # compile every cell anew (hours)
  python -m gptjax.show_configs --memory --refresh --presets=modern/small   # one row anew

Counts are exact: the analytic count, checked against the initialised parameters. The memory table
is XLA's, compiled for each target without the hardware (compile-only estimates).
"""

from __future__ import annotations

import datetime
import sys

from gptjax import cli
from gptjax.errors import UserError


def main(f) -> None:
  from gptjax import describe
  if f.config is not None:
    from gptjax.config import validate
    from gptjax.errors import ConfigError
    preset = cli.preset_argument()
    try:  # the preset with its --config.<field> overrides, e.g. --config.optimizer=muon
      validate(f.config)
    except ConfigError as e:
      raise ConfigError(f"{preset}: {e}") from e
    print(describe.format_preset_details(preset, f.config))
    return
  if f.memory:
    from gptjax.planner import memory_table
    rows = table_rows(f)
    print(
        memory_table.format_memory_table(
            rows, f.markdown, None if f.analytic else memory_table.read_memory_columns()))
    return
  if f.refresh or f.analytic or f.targets or f.presets:
    raise UserError("--refresh, --analytic, --targets and --presets go with --memory.")
  rows = describe.preset_table(f.configs_dir or None)
  if not f.configs_dir:  # the shipped presets: their planned MFU from the shipped memory table
    from gptjax.planner import memory_table
    rows = memory_table.with_planned_mfu(rows)
  print(describe.format_preset_markdown(rows) if f.markdown else describe.format_preset_table(rows))


def table_rows(f) -> list[dict]:
  """The rows of --memory: the shipped table, or computed (--refresh, --analytic)."""
  from gptjax.planner import memory_table, targets
  if not (f.refresh or f.analytic):
    return memory_table.read_memory_table()
  targets.compile_only_process()  # nothing runs here: keep JAX off any accelerator
  rows = memory_table.memory_rows(f.configs_dir or None,
                                  f.targets and f.targets.split(","),
                                  compile=f.refresh,
                                  log=lambda line: print(line, file=sys.stderr, flush=True),
                                  preset_names=f.presets and f.presets.split(","))
  if f.refresh:
    import jax
    rows = memory_table.store_memory_table(rows,
                                           f"python -m gptjax.show_configs --memory --refresh, "
                                           f"jax {jax.__version__}, {datetime.date.today()}",
                                           every_row=not f.presets)
  return rows


def define_flags(values) -> None:
  from absl import flags
  flags.DEFINE_bool("markdown", False, "Print the table as markdown.", flag_values=values)
  flags.DEFINE_bool("memory",
                    False, "Training and sampling memory per device of every preset on "
                    "common GPUs and TPUs, as XLA compiles it (the shipped table), and what fits "
                    "where the shipped settings do not.",
                    flag_values=values)
  flags.DEFINE_bool(
      "refresh",
      False, "With --memory: compile every cell anew (libtpu and jax's "
      "CUDA plugin; on 2 cores minutes per GPU column, hours per multi-chip TPU column) "
      "and rewrite the shipped table (--targets: those columns only).",
      flag_values=values)
  flags.DEFINE_bool("analytic",
                    False, "With --memory: the planner's analytic model instead "
                    "(seconds).",
                    flag_values=values)
  flags.DEFINE_string("targets",
                      "", "With --memory --analytic/--refresh: comma-separated planner "
                      "targets (default: 24/40/80 GB GPUs, tpu-v5e-1, tpu-v5e-8, tpu-v4-8).",
                      flag_values=values)
  flags.DEFINE_string("presets",
                      "", "With --memory --analytic/--refresh: comma-separated presets, those "
                      "rows only (--refresh keeps the table's other rows).",
                      flag_values=values)
  flags.DEFINE_string("configs_dir",
                      "", "List the presets of this directory instead of the "
                      "shipped ones.",
                      flag_values=values)


def cli_main(argv: list[str] | None = None) -> None:
  """`python -m gptjax.show_configs` and the gptjax-show-configs console script."""
  cli.run_command(main, define_flags, __doc__, config="optional", argv=argv)


if __name__ == "__main__":
  cli_main()
