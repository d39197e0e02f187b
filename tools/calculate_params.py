"""Exact GPT parameter counts: from a preset, from explicit sizes, or interactively.

  python tools/calculate_params.py --config_file configs/150M_1024.py      # .py or nanoGPT-style .json
  python tools/calculate_params.py --n_layer 16 --n_embd 768 --n_head 12 --block_size 1024
  python tools/calculate_params.py --interactive
  python tools/calculate_params.py --show_formula

With --config_file, explicit size flags override the preset's values.
"""

from __future__ import annotations

import argparse
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # `import gptjax` without `pip install -e .`
  sys.path.insert(0, REPO_ROOT)

from gptjax import describe  # noqa: E402
from gptjax.config import GPT2_PADDED_VOCAB_SIZE, ModelConfig  # noqa: E402
from gptjax.errors import EXIT_USER_ERROR, UserError, exit_on_user_error  # noqa: E402

REQUIRED_SIZES = ("n_layer", "n_embd", "n_head", "block_size")


class _ArgumentParser(argparse.ArgumentParser):

  def error(self, message):
    print(f"error: {message} (see --help)", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def parse_args(argv):
  parser = _ArgumentParser(description=__doc__.splitlines()[0],
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="\n".join(__doc__.splitlines()[1:]))
  parser.add_argument("--config_file", help="a preset (.py or nanoGPT-style .json)")
  parser.add_argument("--interactive", action="store_true", help="ask for the sizes on stdin")
  parser.add_argument("--show_formula", action="store_true",
                      help="print the exact formula, the usual approximation and the FLOPs formula")
  parser.add_argument("--n_layer", type=int, help="number of transformer blocks (L)")
  parser.add_argument("--n_embd", type=int, help="embedding dimension (C)")
  parser.add_argument("--n_head", type=int, help="attention heads; must divide n_embd")
  parser.add_argument("--block_size", type=int, help="context length (T)")
  parser.add_argument("--vocab_size", type=int,
                      help=f"vocabulary size (V; default {GPT2_PADDED_VOCAB_SIZE}, GPT-2 padded)")
  parser.add_argument("--bias", dest="bias", action="store_const", const=True, default=None,
                      help="biases in dense layers and layer norms (as GPT-2)")
  parser.add_argument("--no_bias", dest="bias", action="store_const", const=False,
                      help="no biases (the default, as nanoGPT)")
  return parser.parse_args(argv)


def _model_config(args):
  """The validated ModelConfig the flags describe, or None when only --show_formula was asked."""
  sizes = {field: getattr(args, field) for field in (*REQUIRED_SIZES, "vocab_size", "bias")}
  given = [f"--{field}" for field, value in sizes.items() if value is not None]
  if args.interactive:
    extra = (["--config_file"] if args.config_file else []) + given
    if extra:
      raise UserError(f"--interactive asks for every size; drop {', '.join(extra)}.")
    return ModelConfig.from_config(describe.ask_architecture())
  if args.config_file:
    return ModelConfig.from_config(
        describe.config_from_values(sizes, base=describe.load_validated(args.config_file)))
  if not given and args.show_formula:
    return None
  missing = [f"--{field}" for field in REQUIRED_SIZES if sizes[field] is None]
  if missing:
    raise UserError(f"missing {', '.join(missing)}. Fix: give all of "
                    f"{', '.join('--' + f for f in REQUIRED_SIZES)} (and optionally --vocab_size, "
                    f"--bias), or use --config_file, --interactive or --show_formula.")
  return ModelConfig.from_config(describe.config_from_values(sizes))


@exit_on_user_error
def main(argv=None):
  args = parse_args(argv)
  model_config = _model_config(args)
  if model_config is not None:
    if args.interactive:
      print()
    print(describe.format_report(model_config))
  if args.show_formula:
    if model_config is not None:
      print()
    print(describe.format_formula(model_config))


if __name__ == "__main__":
  main()
