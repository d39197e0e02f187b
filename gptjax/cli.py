"""The shared start of the command-line entry points (train, sample, convert, plan, tools/bench.py),
and the persistent compilation cache they share.

  def cli_main():  # python -m gptjax.train, and the gptjax-train console script
    cli.entry_point(main, define_flags, __doc__, takes_config=True)

`entry_point` defines the command's flags, answers --help (with every config field, its default and
its comment, for commands that take --config), turns a missing preset, a misspelt field and
nanoGPT's flag habits into one `error:` line with the fix (exit 2), then runs `main` under absl.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import sys

import jax
from absl import app, flags
from absl import logging as absl_logging

from gptjax import config as config_module
from gptjax import targets
from gptjax.errors import UserError, disk_full, exit_on_user_error

HELP_ARGS = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort")
# Flags absl reads itself while parsing, beside the ones defined in flags.FLAGS.
_ABSL_PARSER_FLAGS = ("help", "helpshort", "helpfull", "helpxml", "flagfile", "undefok")

# Programs that compile faster than this are not worth a file in the cache (jax's default: 1 s,
# which would leave out init and evaluation of small models on CPU).
_CACHE_MIN_COMPILE_S = 0.25
_cache_hits = 0
_counting_hits = False


def run(main, argv: list[str] | None = None) -> None:
  """absl's app.run, with Orbax's INFO and WARNING logs muted and user errors printed without
  traceback. Before JAX starts: GPUs lend JAX 90% of their memory (JAX's default is 75%; a set
  XLA_PYTHON_CLIENT_MEM_FRACTION wins), and libtpu gets gptjax's flags (targets.LIBTPU_FLAGS)."""
  os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{targets.GPTJAX_GPU_MEMORY_FRACTION:.2f}")
  targets.add_libtpu_flags()
  absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax warns about read-only opens
  drop_background_noise()
  app.run(exit_on_user_error(main), argv=argv)


def drop_background_noise() -> None:
  """Keeps what Orbax's background threads print about a failure that gptjax reports itself.

  A checkpoint save that fills the disk, or a restore of a damaged file, fails in Orbax's threads:
  each thread logs its traceback (a full disk: six of them), and TensorStore's callbacks for the
  reads and writes left behind raise "Event loop is closed" as unraisable exceptions (twenty), or
  asyncio logs their futures' exceptions as never retrieved.
  The failure itself reaches the main thread, where it is one `error:` line or one `note:`.
  """
  def orbax_disk_full(record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return "orbax" in record.pathname and disk_full(error or Exception(record.getMessage()))

  logging.getLogger("absl").addFilter(lambda record: not orbax_disk_full(record))
  # TensorStore's futures that a failed restore abandoned (gptjax has no asyncio code of its own).
  logging.getLogger("asyncio").addFilter(
      lambda record: "exception was never retrieved" not in record.getMessage())
  default_hook = sys.unraisablehook

  def unraisable(info) -> None:
    if not (isinstance(info.exc_value, RuntimeError) and str(info.exc_value) == "Event loop is closed"):
      default_hook(info)

  sys.unraisablehook = unraisable


def define_config_flag(what: str) -> None:
  """The --config flag of every command that takes a preset."""
  from ml_collections import config_flags
  config_flags.DEFINE_config_file(
      "config", None, f"{what}: configs/<name>.py or a nanoGPT-style .json. Override its fields "
      f"with --config.<field>=<value> (every field is listed below).", lock_config=True)


def entry_point(main, define_flags, doc: str | None, *, takes_config: bool = False,
                argv: list[str] | None = None) -> None:
  """Runs a command: defines its flags, answers --help, checks the arguments, then runs `main`.

  Args:
    main: absl's main(argv).
    define_flags: defines the command's flags (called once, here).
    doc: what --help prints above the flags (the module's docstring).
    takes_config: the command takes --config: --help lists every config field, and the preset,
      the --config.<field> names and nanoGPT-style flags are checked before absl parses them.
    argv: the command line (default: sys.argv).
  """
  before = set(flags.FLAGS)
  define_flags()
  own = [flags.FLAGS[name] for name in flags.FLAGS if name not in before]
  argv = list(sys.argv if argv is None else argv)
  if any(arg in HELP_ARGS for arg in argv[1:]):
    print(usage(doc, own, argv if takes_config else None))
    sys.exit(0)
  if takes_config:
    argv = preflight(argv)
  else:
    exit_on_user_error(_check_flags)(argv, config_fields={})
  sys.argv = argv  # what the command sees, e.g. gptjax.plan's train_command
  run(main, argv)


def usage(doc: str | None, own_flags: list, config_argv: list[str] | None = None) -> str:
  """--help: the docstring, the command's flags, and (with `config_argv`, the command line of a
  command that takes --config) every config field with its default and comment, the preset's value
  beside it where --config names one."""
  lines = [(doc or "").strip(), "", "flags:"]
  seen = set()
  for flag in own_flags:
    if id(flag) in seen:
      continue
    seen.add(id(flag))
    name = f"--[no]{flag.name}" if flag.boolean else f"--{flag.name}"
    default = "" if flag.default is None else f" (default: {flag.default_as_str})"
    lines.append(flags.text_wrap(f"{name}: {flag.help}{default}", length=100, indent="      ",
                                 firstline_indent="  "))
  if config_argv is not None:
    preset, preset_path = None, _config_path(config_argv)
    if preset_path:
      try:
        preset = config_module.load_config(preset_path)
      except UserError:
        preset = None
    base = config_module.get_base_config()
    lines += ["", "config fields, set with --config.<field>=<value> (the defaults of "
              "gptjax/config.py" + (f"; {preset_path}'s value beside them where it differs"
                                    if preset is not None else "") + "):"]
    for field, comment in config_module.field_comments().items():
      default = _lookup(base, field)
      line = f"--config.{field}={_format_value(default)}"
      if preset is not None and _lookup(preset, field) != default:
        line += f"  ({preset_path}: {_format_value(_lookup(preset, field))})"
      lines.append("  " + line)
      lines.append(flags.text_wrap(comment, length=100, indent="      "))
  return "\n".join(lines)


def _lookup(config, dotted: str):
  for key in dotted.split("."):
    config = config[key]
  return config


def _format_value(value) -> str:
  return json.dumps(value) if isinstance(value, str) else str(value)


def _config_path(argv: list[str]) -> str | None:
  for index, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and index + 1 < len(argv):
      return argv[index + 1]
  return None


def preflight(argv: list[str]) -> list[str]:
  """Checks the preset, the override names and every flag before absl parses them; rewrites JSON
  presets. Exits 2 with one `error:` line on a mistake.

  absl would print a traceback for a missing preset or a misspelt --config.<field>, and a FATAL
  for nanoGPT's habits (--config_file x.json, --max_iters=5000); here each is one clear error
  with its fix. --config=x.json becomes --config=<gptjax/config.py>:x.json, loaded by load_config.
  """
  return exit_on_user_error(_check_preset)(_join_config_value(argv))


def _check_preset(argv: list[str]) -> list[str]:
  _check_flags(argv, config_module.field_comments())
  config, result = None, []
  for arg in argv:
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1]
      config = config_module.load_config(path)
      arg = f"--config={config_module.__file__}:{path}" if path.endswith(".json") else arg
    result.append(arg)
  for arg in argv:
    if arg.startswith("--config."):
      field = arg[len("--config."):].split("=", 1)[0]
      if config is None:
        raise UserError(f"--config.{field} needs a preset to override: add --config=<preset>, "
                        f"e.g. --config=configs/tiny_char.py.")
      config_module.check_field_path(config, field, source=f"--config.{field}")
      if "=" in arg:
        config_module.check_field_value(config, field, arg.split("=", 1)[1])
  return result


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


def _check_flags(argv: list[str], config_fields: dict[str, str]) -> None:
  """Raises UserError for a flag the command does not have, naming the one it means: for commands
  with a preset (`config_fields` given), nanoGPT's and the old presets README's --config_file and
  --<field>, and a preset given as a plain argument; for all, a misspelt flag."""
  previous = ""
  for index, arg in enumerate(argv[1:], 1):
    if arg == "--":
      return
    if not arg.startswith("-") or arg == "-":
      takes_value = previous.startswith("-") and "=" not in previous and not _is_bool(previous)
      if config_fields and arg.endswith((".py", ".json")) and not takes_value:
        raise UserError(f"{arg!r} is not an argument of this command: use --config={arg}")
      previous = arg
      continue
    previous = arg
    name, has_value, value = arg.lstrip("-").partition("=")
    if name.startswith("config.") or name in flags.FLAGS or name in _ABSL_PARSER_FLAGS or (
        name.startswith("no") and name[2:] in flags.FLAGS and flags.FLAGS[name[2:]].boolean):
      continue
    if not has_value and index + 1 < len(argv) and not argv[index + 1].startswith("-"):
      value, has_value = argv[index + 1], "="
    if config_fields and name == "config_file":
      raise UserError(f"--config_file is not a flag of gptjax: use --config={value or '<preset>'}")
    field = name[2:] if name.startswith("no") and name[2:] in config_fields and not has_value \
        else name
    if field in config_fields:
      if field != name:  # --nobias
        value = "False"
      elif not has_value:
        value = "True" if isinstance(_lookup(config_module.get_base_config(), field), bool) \
            else "<value>"
      raise UserError(f"--{name} is not a flag of gptjax: use --config.{field}={value}")
    known = sorted({flags.FLAGS[n].name for n in flags.FLAGS}
                   | {f"config.{field}" for field in config_fields})
    close = difflib.get_close_matches(name, known, n=1)
    raise UserError(f"unknown flag --{name}." + (f" Did you mean --{close[0]}?" if close else "")
                    + " Fix: see --help for the flags"
                    + (" and the --config.<field> names." if config_fields else "."))


def _is_bool(arg: str) -> bool:
  name = arg.lstrip("-")
  if name in flags.FLAGS:
    return flags.FLAGS[name].boolean
  return name.startswith("no") and name[2:] in flags.FLAGS and flags.FLAGS[name[2:]].boolean


def _count_hit(event: str, **kwargs) -> None:
  global _cache_hits
  if event == "/jax/compilation_cache/cache_hits":
    _cache_hits += 1


def use_compilation_cache(directory: str) -> None:
  """Keeps compiled programs in `directory` (JAX's persistent compilation cache), so running a
  command again (resuming, another seed, sampling) loads the train step instead of compiling it.
  "" leaves JAX's own setting alone ($JAX_COMPILATION_CACHE_DIR, off unless set), and a set
  $JAX_COMPILATION_CACHE_DIR wins over `directory`. Takes effect only before the process's first
  compilation, as JAX reads the setting once."""
  if directory and not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
      jax.config.update("jax_persistent_cache_min_compile_time_secs", _CACHE_MIN_COMPILE_S)
  global _counting_hits
  if not _counting_hits:  # once per process: listeners cannot be removed
    jax.monitoring.register_event_listener(_count_hit)
    _replace_unreadable_cache_entries()
    _counting_hits = True


def _replace_unreadable_cache_entries() -> None:
  """Makes an unreadable compilation-cache entry cost one compile, once.

  JAX warns about an entry it cannot load (cut short by a kill or a full disk: it writes entries
  in place) and compiles the program, but never stores it again, since its cache keeps an existing
  file: the warning came back on every run. Here such an entry is removed with a note before JAX
  compiles, so the fresh program takes its place. This wraps a private JAX function; where it is
  missing (another JAX version), JAX's own behaviour stays.
  """
  from jax._src import compilation_cache
  load = getattr(compilation_cache, "get_executable_and_time", None)
  if load is None:
    return

  def load_or_remove(cache_key, *args, **kwargs):
    try:
      return load(cache_key, *args, **kwargs)
    except Exception as e:
      directory = jax.config.jax_compilation_cache_dir or ""
      entry = os.path.join(os.path.expanduser(directory), f"{cache_key}-cache")
      if not os.path.isfile(entry):  # not a local LRU cache file: leave it to JAX
        raise
      for path in (entry, entry[:-len("-cache")] + "-atime"):
        if os.path.exists(path):
          os.remove(path)
      print(f"note: removed an unreadable compilation cache entry ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:120]}), {entry}; it is compiled and stored again.",
            file=sys.stderr, flush=True)
      return None, None

  compilation_cache.get_executable_and_time = load_or_remove


def compilation_cache_hits() -> int:
  """Programs this process loaded from the persistent cache instead of compiling them."""
  return _cache_hits
