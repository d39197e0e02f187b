"""Train a GPT on your text, or resume a run: `python -m gptjax.train` (or gptjax-train).

  python -m gptjax.train --config=tiny_char --config.max_iters=200
  python -m gptjax.train --config=150M --config.input_file=input_dante.txt --config.max_iters=5000
  python -m gptjax.train --config=350M_1024 --config.data_dir=data/corpus
  python -m gptjax.train --config=my_preset.json --config.learning_rate=1e-4

--config names a shipped preset (`python -m gptjax.show_configs` lists them) or a .py or
nanoGPT-style .json file; --config.<field>=<value> overrides any field (all of them are listed
below). The run lives in <out_dir>/<model_name>/: checkpoints/, config.json, metrics.jsonl,
tensorboard/ and loss.png. Running the same command again resumes from the latest checkpoint;
Ctrl-C saves the step in flight and stops.
"""

from __future__ import annotations

import sys

from gptjax import cli
from gptjax.errors import UserError


def main(f) -> None:
  from gptjax.training.loop import train
  config = f.config
  if config is None:
    raise UserError("--config is required, e.g. --config=tiny_char (python -m "
                    "gptjax.show_configs lists the presets).")
  try:
    train(config)
  except KeyboardInterrupt:  # train() has saved a checkpoint and said so
    sys.exit(cli.EXIT_INTERRUPTED)


def define_flags(values) -> None:
  del values  # --config only


def cli_main(argv: list[str] | None = None) -> None:
  """`python -m gptjax.train` and the gptjax-train console script."""
  cli.run_command(main, define_flags, __doc__, config="required", argv=argv)


if __name__ == "__main__":
  cli_main()
