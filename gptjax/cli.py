"""How every gptjax command starts: one flag dialect, --help, one-line errors, a quiet JAX.

  def cli_main(argv=None):  # python -m gptjax.train, and the gptjax-train console script
    cli.run_command(main, define_flags, __doc__, config="required", argv=argv)

The dialect, the same for every command and tool: `--config=<preset>` (a shipped preset's name,
or a .py or nanoGPT-style .json file) and `--config.<field>=<value>` to override a field. A
mistyped flag, a preset that does not exist, a misspelt field and nanoGPT's habits (`--config_file
x.json`, `--max_iters 5000`) are each one `error:` line with the fix, exit 2; all the habits of one
command line are reported at once. Each command gets its own absl FlagValues, so a command can run
in-process (tests do) as from a shell.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import signal
import sys
import threading

from absl import flags
from absl import logging as absl_logging

from gptjax import config as config_lib
from gptjax import devices, presets
from gptjax.errors import EXIT_USER_ERROR, UserError, disk_full, exit_on_user_error

HELP_ARGS = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort")
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports an interrupted command
# Where --config=<preset> is loaded: ml_collections imports this file and calls its get_config.
_PRESET_LOADER = presets.__file__


def run_command(main,
                define_flags,
                doc: str | None,
                *,
                config: str | None = None,
                aliases: dict[str, str] | None = None,
                uses_jax: bool = True,
                argv: list[str] | None = None) -> None:
  """Runs a command: defines its flags, answers --help, checks the arguments, then `main(flags)`.

  Args:
    main: the command, called with its parsed absl FlagValues.
    define_flags: defines the command's flags on the FlagValues it is given.
    doc: what --help prints above the flags (the command module's docstring).
    config: how the command takes --config (--help then lists every config field): "required",
      "optional" (`flags.config` is None without it), or "base" (without it, --config.<field>
      overrides apply to the base config).
    aliases: flags of nanoGPT's scripts and what this command calls them, for the hint.
    uses_jax: start JAX (quietly, on the right platforms) before `main`.
    argv: the command line (default: sys.argv).
  """
  argv = list(sys.argv if argv is None else argv)
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, _exit_on_interrupt)
    _watch_interrupts()
  try:
    values, command_line = flags.FlagValues(), list(argv)
    define_flags(values)
    if config:
      config_lib_flag(values, command_line)
    if any(arg in HELP_ARGS for arg in argv[1:]):
      print(usage(doc, values, argv if config else None))
      sys.exit(0)
    argv = exit_on_user_error(_check_arguments)(argv, values, config, aliases or {})
    command_line[:] = argv  # where --config finds its overrides (not sys.argv: in-process runs)
    if uses_jax:
      devices.start_jax()
    try:
      values(argv)
    except flags.Error as e:
      print(f"error: {e}. Fix: see --help.", file=sys.stderr)
      sys.exit(EXIT_USER_ERROR)
    if config and values["config"].value is not None:  # --config.remat=True: "full"
      config_lib.normalize(values["config"].value)
    flags.FLAGS.mark_as_parsed()  # absl's logging then stays quiet about unparsed flags
    absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax warns about read-only opens
    drop_background_noise()
  except KeyboardInterrupt:  # before the handler above was in place
    _exit_on_interrupt()
  given, sys.argv = sys.argv, argv  # what the command sees (gptjax.plan repeats its own)
  try:
    exit_on_user_error(main)(values)
  finally:
    sys.argv = given


def _exit_on_interrupt(*_) -> None:
  """Ctrl-C (SIGINT) ends the command at once: one line, exit 130. A command that has something
  to finish or clean up first takes SIGINT over (`interrupts_raise`, or its own handler)."""
  sys.stdout.flush()
  print("\ninterrupted.", file=sys.stderr, flush=True)
  os._exit(EXIT_INTERRUPTED)


def _watch_interrupts() -> None:
  """Makes Ctrl-C end the command at once even while the main thread is inside a long call into
  C++ (XLA compiling, a restore), where Python runs its signal handlers only after the call
  returns: the signal also wakes a thread, which exits while `_exit_on_interrupt` is the handler.
  Installed once per process; a command that takes SIGINT over is left to its own handler."""
  if getattr(_watch_interrupts, "started", False):
    return
  read_end, write_end = os.pipe()
  os.set_blocking(write_end, False)
  signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

  def watch() -> None:
    while True:
      if signal.SIGINT in os.read(read_end, 64) and (signal.getsignal(signal.SIGINT)
                                                     is _exit_on_interrupt):
        _exit_on_interrupt()

  threading.Thread(target=watch, name="gptjax-interrupts", daemon=True).start()
  _watch_interrupts.started = True


def interrupts_raise() -> None:
  """From here on Ctrl-C raises KeyboardInterrupt (Python's default), for a command that cleans
  up after itself."""
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, signal.default_int_handler)


def config_lib_flag(values: flags.FlagValues, command_line: list[str]) -> None:
  """The --config flag (ml_collections' config_file flag, lock_config) on `values`, reading its
  --config.<field> overrides from `command_line` when the flags are parsed."""
  from ml_collections import config_flags
  config_flags.DEFINE_config_file(
      "config",
      None, "Preset: a shipped preset's name (tiny_char, 350M_1024, ...), or a .py or "
      "nanoGPT-style .json file. Override its fields with --config.<field>=<value> (every field "
      "is listed below).",
      flag_values=values,
      lock_config=True,
      sys_argv=command_line)


def drop_background_noise() -> None:
  """Keeps what Orbax's background threads print about a failure that gptjax reports itself.

  A checkpoint save that fills the disk, or a restore of a damaged file, fails in Orbax's threads:
  each thread logs its traceback (a full disk: six of them), and TensorStore's callbacks for the
  reads and writes left behind raise "Event loop is closed" as unraisable exceptions (twenty), or
  asyncio logs their futures' exceptions as never retrieved. The failure itself reaches the main
  thread, where it is one `error:` line or one `note:`. Installed once per process.
  """
  if getattr(sys.unraisablehook, "gptjax", False):
    return

  def orbax_disk_full(record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return "orbax" in record.pathname and disk_full(error or Exception(record.getMessage()))

  logging.getLogger("absl").addFilter(lambda record: not orbax_disk_full(record))
  # TensorStore's futures that a failed restore abandoned (gptjax has no asyncio code of its own).
  logging.getLogger("asyncio").addFilter(
      lambda record: "exception was never retrieved" not in record.getMessage())
  default_hook = sys.unraisablehook

  def unraisable(info) -> None:
    if not (isinstance(info.exc_value, RuntimeError) and
            str(info.exc_value) == "Event loop is closed"):
      default_hook(info)

  unraisable.gptjax = True
  sys.unraisablehook = unraisable


# --- --help -----------------------------------------------------------------------------------------


def usage(doc: str | None, values: flags.FlagValues, config_argv: list[str] | None = None) -> str:
  """--help: the docstring, the command's flags, and (with `config_argv`, the command line of a
  command that takes --config) every config field with its default and comment, the preset's value
  beside it where --config names one."""
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
    preset, name = None, _config_value(config_argv)
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


def preset_argument() -> str | None:
  """The preset as the running command's --config gave it (a name or a path), None without one."""
  value = _config_value(sys.argv)
  return None if value is None else value.split(f"{_PRESET_LOADER}:", 1)[-1]


def _lookup(config, dotted: str):
  for key in dotted.split("."):
    config = config[key]
  return config


def _format_value(value) -> str:
  return json.dumps(value) if isinstance(value, str) else str(value)


def _config_value(argv: list[str]) -> str | None:
  for index, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and index + 1 < len(argv):
      return argv[index + 1]
  return None


# --- Checking a command line before absl parses it ---------------------------------------------------


def _check_arguments(argv: list[str], values: flags.FlagValues, config: str | None,
                     aliases: dict[str, str]) -> list[str]:
  """The command line with --config=<preset> pointed at the preset loader; a UserError for each
  kind of mistake absl would report as a traceback or a FATAL."""
  argv = _join_config_value(argv)
  fields = config_lib.field_comments() if config else {}
  _check_flags(argv, values, fields, aliases)
  if not config:
    return argv
  preset = _config_value(argv)
  if preset is None and config == "base":
    argv.insert(1, "--config=")
    preset = ""
  loaded = None
  if preset is not None:
    loaded = presets.get_config(preset)  # a UserError for a preset that does not load
    argv = [
        f"--config={_PRESET_LOADER}:{preset}" if arg.startswith("--config=") else arg
        for arg in argv
    ]
  for arg in argv:
    if arg.startswith("--config."):
      field = arg[len("--config."):].split("=", 1)[0]
      if loaded is None:
        raise UserError(f"--config.{field} needs a preset to override: add --config=<preset>, "
                        f"e.g. --config=tiny_char.")
      presets.check_field_path(loaded, field, source=f"--config.{field}")
      if "=" in arg:
        presets.check_field_value(loaded, field, arg.split("=", 1)[1])
  return argv


def _join_config_value(argv: list[str]) -> list[str]:
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


def _check_flags(argv: list[str], values: flags.FlagValues, fields: dict[str, str],
                 aliases: dict[str, str]) -> None:
  """A UserError naming every flag the command does not have, each with the one it means: for
  commands with a preset (`fields` given), nanoGPT's --config_file and --<field>, and a preset
  given as a plain argument; for all, nanoGPT's names for this command's flags (`aliases`) and
  misspellings."""
  hints, previous = [], ""
  for index, arg in enumerate(argv[1:], 1):
    if arg == "--":
      break
    if not arg.startswith("-") or arg == "-":
      takes_value = previous.startswith("-") and "=" not in previous and not _is_bool(
          previous, values)
      if not takes_value:
        if fields and arg.endswith((".py", ".json")):
          hints.append(f"{arg!r} is not an argument of this command: use --config={arg}")
        else:
          hints.append(f"unexpected argument {arg!r}. Fix: flags take the form --name=value "
                       f"(see --help)")
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
  if hints:
    raise UserError("\n".join(hints) if len(hints) == 1 else f"{len(hints)} flags to change:\n  " +
                    "\n  ".join(hints))


def _hint(name: str, value: str, has_value: str, values: flags.FlagValues, fields: dict[str, str],
          aliases: dict[str, str]) -> str:
  """The hint for one flag the command does not have."""
  if fields and name == "config_file":
    return f"--config_file is not a flag of gptjax: use --config={value or '<preset>'}"
  if name in aliases:
    return f"--{name} is not a flag of this command: use {aliases[name]}" + (f"={value}"
                                                                             if has_value else "")
  field = name[2:] if name.startswith("no") and name[2:] in fields and not has_value else name
  if field in fields:
    if field != name:  # --nobias
      value = "False"
    elif not has_value:
      value = "True" if isinstance(_lookup(config_lib.get_base_config(), field), bool) \
          else "<value>"
    return f"--{name} is not a flag of gptjax: use --config.{field}={value}"
  known = sorted({values[n].name for n in values} | {f"config.{f}" for f in fields})
  close = difflib.get_close_matches(name, known, n=1)
  return (f"unknown flag --{name}." + (f" Did you mean --{close[0]}?" if close else "") +
          " Fix: see --help for the flags" +
          (" and the --config.<field> names." if fields else "."))


def _is_bool(arg: str, values: flags.FlagValues) -> bool:
  name = arg.lstrip("-")
  if name in values:
    return values[name].boolean
  return name.startswith("no") and name[2:] in values and values[name[2:]].boolean
