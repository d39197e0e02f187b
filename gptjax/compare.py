"""A fair A/B of training settings on your own data: `python -m gptjax.compare`.

  python -m gptjax.compare --out_dir=out/ab --seeds=1,2,3 \
      --set=input_file=../shared/data/tinyshakespeare.txt --set=eval_interval=50 \
      --arm=adamw=recipes/shakespeare_char_cpu \
      --arm=muon=recipes/shakespeare_char_cpu,optimizer=muon,lr_schedule=wsd

Each --arm is NAME=PRESET with optional ,field=value overrides; --set overrides every arm. Every
arm trains once per seed, one run after the other, into <out_dir>/runs/<arm>-seed<seed> (running
the command again resumes or reuses finished runs). Then a table: each arm's final val bits per
byte (mean ± sd over seeds), the tokens and seconds of training it took to reach the target
(--target_bpb; default the first arm's mean final val bpb), and Welch's t-test p-value of its
final val bpb against the first arm's; <out_dir>/compare.png plots the curves and
<out_dir>/compare.json holds the figures. Arms must train on the same data, tokenizer and number
of tokens with the same evaluations; --allow_unlike compares them anyway.
"""

from __future__ import annotations

import os

from gptjax import cli
from gptjax.errors import UserError


def define_flags(values) -> None:
  from absl import flags
  flags.DEFINE_multi_string("arm", [],
                            "NAME=PRESET[,field=value...]: one setting to compare; give two or "
                            "more.",
                            flag_values=values)
  flags.DEFINE_multi_string("set", [],
                            "field=value applied to every arm (data, steps, evaluations).",
                            flag_values=values)
  flags.DEFINE_string("seeds",
                      "1,2,3",
                      "Comma-separated seeds, one run per arm each.",
                      flag_values=values)
  flags.DEFINE_string("out_dir",
                      "out/compare",
                      "Where the runs, table and plot go.",
                      flag_values=values)
  flags.DEFINE_float("target_bpb",
                     None, "The val bits per byte to reach (default: the first arm's mean final "
                     "val bpb).",
                     flag_values=values)
  flags.DEFINE_bool("allow_unlike",
                    False,
                    "Compare arms that differ in data, tokenizer, tokens or evaluations.",
                    flag_values=values)


def parse_seeds(text: str) -> list[int]:
  try:
    seeds = [int(part) for part in text.split(",") if part.strip()]
  except ValueError:
    seeds = []
  if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
    raise UserError(f"--seeds={text!r} is not a list of distinct seeds. Fix: e.g. --seeds=1,2,3.")
  return seeds


def main(f) -> None:
  from gptjax import files
  from gptjax.training import compare
  from gptjax.training.loop import train
  if len(f.arm) < 2:
    raise UserError("give two or more --arm=NAME=PRESET[,field=value...] to compare. Fix: e.g. "
                    "--arm=a=recipes/shakespeare_char_cpu "
                    "--arm=b=recipes/shakespeare_char_cpu,optimizer=muon.")
  seeds = parse_seeds(f.seeds)
  arms = [compare.parse_arm(text, f.set) for text in f.arm]
  names = [arm.name for arm in arms]
  if len(set(names)) != len(names):
    raise UserError(f"--arm names {names} repeat. Fix: give each arm its own name.")
  differences = compare.unlike(arms)
  if differences and not f.allow_unlike:
    raise UserError("the arms are not like for like (" + "; ".join(differences) + "). Fix: make "
                    "them agree (--set=field=value sets it for all), or pass --allow_unlike.")
  curves = {}
  for arm in arms:
    curves[arm.name] = []
    for seed in seeds:
      config = compare.run_config(arm, seed, f.out_dir)
      print(f"# {arm.name}, seed {seed}: {config.out_dir}/{config.model_name}", flush=True)
      train(config)
      curves[arm.name].append(
          compare.read_curve(os.path.join(config.out_dir, config.model_name), config))
  summary = compare.summarize(curves, f.target_bpb)
  compare.plot(curves, summary["target_bpb"], os.path.join(f.out_dir, "compare.png"))
  files.write_json(os.path.join(f.out_dir, "compare.json"), dict(summary, curves=curves))
  print(compare.format_table(summary))
  print(f"# plot: {os.path.join(f.out_dir, 'compare.png')}; figures: "
        f"{os.path.join(f.out_dir, 'compare.json')}")


def cli_main(argv: list[str] | None = None) -> None:
  """`python -m gptjax.compare` and the gptjax-compare console script."""
  cli.run_command(main, define_flags, __doc__, argv=argv)


if __name__ == "__main__":
  cli_main()
