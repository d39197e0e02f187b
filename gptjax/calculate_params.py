"""Exact GPT parameter counts: of a preset, of the sizes you give, or interactively:
`python -m gptjax.calculate_params` (or gptjax-calculate-params).

  python -m gptjax.calculate_params --config=150M_1024        # a shipped preset, .py or .json
  python -m gptjax.calculate_params --config.n_layer=16 --config.n_embd=768 --config.n_head=12 \\
      --config.block_size=1024                                 # + --config.vocab_size, bias
  python -m gptjax.calculate_params --config=150M_1024 --config.n_layer=20   # a preset, changed
  python -m gptjax.calculate_params --interactive
  python -m gptjax.calculate_params --show_formula

The report breaks the count down by component, checks it against the initialised parameters, and
gives the training FLOPs per token.
"""

from __future__ import annotations

import sys

from gptjax import cli
from gptjax.errors import UserError

REQUIRED_SIZES = ("n_layer", "n_embd", "n_head", "block_size")
# The old tool's size flags, now config fields.
OLD_FLAGS = {"no_bias": "--config.bias=False"}


def model_config(f):
  """The validated ModelConfig the command line describes, or None for --show_formula alone."""
  from gptjax import describe, presets
  from gptjax.config import ModelConfig
  # The fields given (not --config itself: the command line always has one, the base config's).
  given = [arg.split("=", 1)[0] for arg in sys.argv[1:] if arg.startswith("--config.")]
  preset = cli.preset_argument()
  if f.interactive:
    if preset or given:
      raise UserError(f"--interactive asks for every size; drop "
                      f"{', '.join(['--config'] * bool(preset) + given)}.")
    return ModelConfig.from_config(describe.ask_architecture())
  if not preset:
    sizes = [f"--config.{field}" for field in REQUIRED_SIZES]
    if not given and f.show_formula:
      return None
    missing = [size for size in sizes if size not in given]
    if missing:
      raise UserError(f"missing {', '.join(missing)}. Fix: give all of {', '.join(sizes)} (and "
                      f"optionally --config.vocab_size, --config.bias), or a preset with "
                      f"--config=<preset>, or --interactive or --show_formula.")
  return ModelConfig.from_config(presets.with_values({}, base=f.config))


def main(f) -> None:
  from gptjax import describe
  config = model_config(f)
  if config is not None:
    if f.interactive:
      print()
    print(describe.format_report(config))
  if f.show_formula:
    if config is not None:
      print()
    print(describe.format_formula(config))


def define_flags(values) -> None:
  from absl import flags
  flags.DEFINE_bool("interactive", False, "Ask for the sizes on stdin.", flag_values=values)
  flags.DEFINE_bool("show_formula",
                    False, "Print the exact formula, the usual approximation and "
                    "the FLOPs formula.",
                    flag_values=values)


def cli_main(argv: list[str] | None = None) -> None:
  """`python -m gptjax.calculate_params` and the gptjax-calculate-params console script."""
  cli.run_command(main, define_flags, __doc__, config="base", aliases=OLD_FLAGS, argv=argv)


if __name__ == "__main__":
  cli_main()
