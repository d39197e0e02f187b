"""The command line of every gptjax command, checked before absl parses it, and its --help.

`check_arguments` turns each kind of mistake absl would report as a traceback or a FATAL (a
mistyped flag, a preset that does not exist, a misspelt field, nanoGPT's habits such as
`--config_file x.json` and `--max_iters 5000`) into one `error:` naming all of a command line's
mistakes at once, each with the flag that fixes it; `usage` is --help. Only the standard library
at import: gptjax/cli.py imports this module before its Ctrl-C handler is in place.
"""

from __future__ import annotations

import difflib
import json
import os

from gptjax.errors import UserError

# Where --config=<preset> is loaded: ml_collections imports this file and calls its get_config.
PRESET_LOADER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets.py")
# nanoGPT's flags that gptjax has no use for, and why.
NANOGPT_ONLY_FLAGS = {
    "device": "gptjax chooses its devices itself (JAX_PLATFORMS=cpu for the CPU)",
    "compile": "gptjax always compiles its step",
    "backend": "JAX picks its collectives itself",
    "wandb_log": "gptjax logs to metrics.jsonl and TensorBoard",
    "wandb_project": "gptjax logs to metrics.jsonl and TensorBoard",
    "wandb_run_name": "gptjax logs to metrics.jsonl and TensorBoard",
}
# nanoGPT's names of config fields that gptjax names differently.
NANOGPT_FIELDS = {"gradient_accumulation_steps": "grad_accum_steps"}

# --- --help -----------------------------------------------------------------------------------------


def usage(doc: str | None, values, config_argv: list[str] | None = None) -> str:
  """--help: the docstring, the command's flags, and (with `config_argv`, the command line of a
  command that takes --config) every config field with its default and comment, the preset's value
  beside it where --config names one."""
  from absl import flags
  from gptjax import config as config_lib
  from gptjax import presets
  lines = [(doc or "").strip(), "", "flags:"]
  for name in sorted(values):
    flag = values[name]
    if name != flag.name:  # a short name of another flag
      continue
    shown = f"--[no]{flag.name}" if flag.boolean else f"--{flag.name}"
    default = "" if flag.default is None else f" (default: {flag.default_as_str})"
    lines.append(
        flags.text_wrap(f"{shown}: {flag.help}{default}",
                        length=100,
                        indent="      ",
                        firstline_indent="  "))
  if config_argv is not None:
    preset, name = None, config_value(config_argv)
    if name:
      try:
        preset = presets.load(name)
      except UserError:
        preset = None
    base = config_lib.get_base_config()
    lines += [
        "", "config fields, set with --config.<field>=<value> (gptjax's defaults" +
        (f"; {name}'s value beside them where it differs" if preset is not None else "") + "):"
    ]
    for field, comment in config_lib.field_comments().items():
      default = _lookup(base, field)
      line = f"--config.{field}={_format_value(default)}"
      if preset is not None and _lookup(preset, field) != default:
        line += f"  ({name}: {_format_value(_lookup(preset, field))})"
      lines.append("  " + line)
      lines.append(flags.text_wrap(comment, length=100, indent="      "))
  return "\n".join(lines)


def _lookup(config, dotted: str):
  for key in dotted.split("."):
    config = config[key]
  return config


def _format_value(value) -> str:
  return json.dumps(value) if isinstance(value, str) else str(value)


def config_value(argv: list[str]) -> str | None:
  for index, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and index + 1 < len(argv):
      return argv[index + 1]
  return None


# --- Checking a command line before absl parses it ---------------------------------------------------


def check_arguments(argv: list[str], values, config: str | None, aliases: dict[str,
                                                                               str]) -> list[str]:
  """The command line with --config=<preset> pointed at the preset loader; a UserError naming
  every mistake absl would report as a traceback or a FATAL (flags, the preset, the fields), all
  at once."""
  from gptjax import config as config_lib
  from gptjax import presets
  argv = _joinconfig_value(argv)
  fields = config_lib.field_comments() if config else {}
  problems = _check_flags(argv, values, fields, aliases)
  if config:
    preset = config_value(argv)
    if preset is None and config == "base":
      argv.insert(1, "--config=")
      preset = ""
    loaded = None
    if preset is not None:
      try:
        loaded = presets.get_config(preset)
      except UserError as e:  # a preset that does not load
        problems.append(str(e))
      argv = [
          f"--config={PRESET_LOADER}:{preset}" if arg.startswith("--config=") else arg
          for arg in argv
      ]
    overrides = [arg for arg in argv if arg.startswith("--config.")]
    if preset is None and overrides and not any("--config=" in p for p in problems):
      field = overrides[0][len("--config."):].split("=", 1)[0]
      problems.append(f"--config.{field} needs a preset to override: add --config=<preset>, "
                      f"e.g. --config=tiny_char.")
    fields_of = loaded if loaded is not None else config_lib.get_base_config()  # same names
    for arg in overrides:
      field, has_value, value = arg[len("--config."):].partition("=")
      try:
        presets.check_field_path(fields_of, field, source=f"--config.{field}")
        if has_value:
          presets.check_field_value(fields_of, field, value)
      except UserError as e:
        problems.append(str(e))
  if problems:
    raise UserError(problems[0] if len(problems) == 1 else f"{len(problems)} things to change:\n"
                    "  " + "\n  ".join(problems))
  return argv


def _joinconfig_value(argv: list[str]) -> list[str]:
  """`--config path` as `--config=path`, so that one form is checked and rewritten."""
  result, index = [], 0
  while index < len(argv):
    if argv[index] == "--config" and index + 1 < len(argv):
      result.append(f"--config={argv[index + 1]}")
      index += 2
    else:
      result.append(argv[index])
      index += 1
  return result


def _check_flags(argv: list[str], values, fields: dict[str, str], aliases: dict[str,
                                                                                str]) -> list[str]:
  """A hint for every flag the command does not have, each with the one it means: for commands
  with a preset (`fields` given), nanoGPT's --config_file and --<field>, and a preset given as a
  plain argument; for all, nanoGPT's names for this command's flags (`aliases`), nanoGPT's flags
  gptjax has no use for, and misspellings."""
  hints, previous = [], ""
  for index, arg in enumerate(argv[1:], 1):
    if arg == "--":
      break
    if not arg.startswith("-") or arg == "-":
      takes_value = previous.startswith("-") and "=" not in previous and not _is_bool(
          previous, values)
      if not takes_value:
        if fields and arg.endswith((".py", ".json")):
          hints.append(f"{arg!r} is not an argument of this command: use {_preset_hint(arg)}")
        else:
          hints.append(f"unexpected argument {arg!r}. Fix: flags take the form "
                       f"--<name>=<value> (see --help)")
      previous = arg
      continue
    previous = arg
    name, has_value, value = arg.lstrip("-").partition("=")
    if name.startswith("config.") or name in values or name in ("help", "helpshort") or (
        name.startswith("no") and name[2:] in values and values[name[2:]].boolean):
      continue
    if not has_value and index + 1 < len(argv) and not argv[index + 1].startswith("-"):
      value, has_value = argv[index + 1], "="
    hints.append(_hint(name, value, has_value, values, fields, aliases))
  return hints


def _preset_hint(path: str) -> str:
  """--config=<path> where that file is a preset; else the shipped preset it most likely means."""
  from gptjax import presets
  if os.path.isfile(path):
    return f"--config={path}"
  shipped = presets.catalogue()
  name = os.path.splitext(os.path.basename(path))[0]
  sibling = next((os.path.splitext(path)[0] + ext
                  for ext in presets.PRESET_EXTENSIONS
                  if os.path.isfile(os.path.splitext(path)[0] + ext)), None)
  close = [name] if name in shipped else difflib.get_close_matches(
      name, list(shipped), n=1, cutoff=0.4)
  if sibling:
    return f"--config={sibling} ({path} does not exist)"
  if close:
    return f"--config={close[0]} (the shipped preset nearest to {path}, which does not exist)"
  return (f"--config=<preset> ({path} does not exist; `python -m gptjax.show_configs` lists the "
          f"presets)")


def _hint(name: str, value: str, has_value: str, values, fields: dict[str, str],
          aliases: dict[str, str]) -> str:
  """The hint for one flag the command does not have."""
  if fields and name == "config_file":
    return ("--config_file is not a flag of gptjax: use " +
            (_preset_hint(value) if value else "--config=<preset>"))
  if name in aliases:
    return f"--{name} is not a flag of this command: use {aliases[name]}" + (f"={value}"
                                                                             if has_value else "")
  if name in NANOGPT_ONLY_FLAGS:
    return f"--{name} is nanoGPT's, not gptjax's: drop it ({NANOGPT_ONLY_FLAGS[name]})"
  negated = name.startswith("no") and not has_value and NANOGPT_FIELDS.get(name[2:],
                                                                           name[2:]) in fields
  field = NANOGPT_FIELDS.get(name[2:] if negated else name, name[2:] if negated else name)
  if field in fields:
    if negated:  # --nobias
      value = "False"
    elif not has_value:
      from gptjax import config as config_lib
      value = "True" if isinstance(_lookup(config_lib.get_base_config(), field), bool) \
          else "<value>"
    return f"--{name} is not a flag of gptjax: use --config.{field}={value}"
  known = sorted({values[n].name for n in values} | {f"config.{f}" for f in fields})
  close = difflib.get_close_matches(name, known, n=1)
  return (f"unknown flag --{name}." + (f" Did you mean --{close[0]}?" if close else "") +
          " Fix: see --help for the flags" +
          (" and the --config.<field> names." if fields else "."))


def _is_bool(arg: str, values) -> bool:
  name = arg.lstrip("-")
  if name in values:
    return values[name].boolean
  return name.startswith("no") and name[2:] in values and values[name[2:]].boolean
