"""How every gptjax command starts: Ctrl-C at once, one flag dialect, --help, one-line errors,
a quiet JAX.

  def cli_main(argv=None):  # python -m gptjax.train, and the gptjax-train console script
    cli.run_command(main, define_flags, __doc__, config="required", argv=argv)

The dialect, the same for every command and tool: `--config=<preset>` (a shipped preset's name,
or a .py or nanoGPT-style .json file) and `--config.<field>=<value>` to override a field. A
mistyped flag, a preset that does not exist, a misspelt field and nanoGPT's habits (`--config_file
x.json`, `--max_iters 5000`) are each one `error:` line with the fix, exit 2; all the habits of one
command line are reported at once (gptjax/command_line.py). Each command gets its own absl
FlagValues, so a command can run in-process (tests do) as from a shell. Ctrl-C stops any command
at any moment with one line and exit status 130, from its first import to its last write.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from gptjax import command_line
from gptjax.errors import EXIT_USER_ERROR, exit_on_user_error

# Only the standard library above: a command installs its Ctrl-C handler (run_command) before
# anything slow is imported (absl, ml_collections, JAX); those are imported where they are used.

HELP_ARGS = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort")
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports an interrupted command


def run_command(main,
                define_flags,
                doc: str | None,
                *,
                config: str | None = None,
                aliases: dict[str, str] | None = None,
                uses_jax: bool = True,
                argv: list[str] | None = None) -> None:
  """Runs a command: defines its flags, answers --help, checks the arguments, then `main(flags)`.

  Ctrl-C is one line and exit status 130 from the first moment: the handler is installed before
  anything slow is imported. A KeyboardInterrupt that `main` lets out (a command that took SIGINT
  over to clean up, see `interrupts_raise`) ends the same way.

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
  given = sys.argv  # restored at the end: a command run in-process (tests) leaves it as it was
  try:
    try:
      if not any(arg in HELP_ARGS for arg in argv[1:]):
        status(f"importing {'JAX' if uses_jax else 'its libraries'}")
      from absl import flags
      from absl import logging as absl_logging
      values, overrides_from = flags.FlagValues(), list(argv)
      define_flags(values)
      if config:
        config_lib_flag(values, overrides_from)
      if any(arg in HELP_ARGS for arg in argv[1:]):
        print(command_line.usage(doc, values, argv if config else None))
        sys.exit(0)
      argv = exit_on_user_error(command_line.check_arguments)(argv, values, config, aliases or {})
      overrides_from[:] = argv  # where --config finds its overrides (not sys.argv: in-process runs)
      if uses_jax:
        from gptjax import devices
        devices.start_jax()
      try:
        values(argv)
      except flags.Error as e:
        print(f"error: {e}. Fix: see --help.", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
      if config and values["config"].value is not None:  # --config.remat=True: "full"
        from gptjax import config as config_lib
        config_lib.normalize(values["config"].value)
      flags.FLAGS.mark_as_parsed()  # absl's logging then stays quiet about unparsed flags
      absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax warns about read-only opens
      drop_background_noise()
    except KeyboardInterrupt:  # before the handler above was in place
      _exit_on_interrupt()
    sys.argv = argv  # what the command sees (gptjax.plan repeats its own)
    exit_on_user_error(main)(values)
  except KeyboardInterrupt:  # a command that took SIGINT over has cleaned up
    sys.stdout.flush()
    print("\ninterrupted.", file=sys.stderr, flush=True)
    sys.exit(EXIT_INTERRUPTED)
  finally:
    sys.argv = given


def status(text: str) -> None:
  """Says what the command is doing while it is slow ("importing JAX", "compiling ..."), on
  stderr, where stderr is a terminal: logs and pipes get the command's output alone."""
  try:
    if sys.stderr.isatty():
      print(f"{_program()}: {text}...", file=sys.stderr, flush=True)
  except (AttributeError, ValueError, OSError):  # a replaced or closed stderr
    pass


def _program() -> str:
  main = sys.modules.get("__main__")
  spec = getattr(main, "__spec__", None)
  if spec is not None and spec.name.startswith("gptjax."):
    return spec.name
  return os.path.basename(sys.argv[0] or "gptjax") or "gptjax"


_exiting = threading.Lock()


def _exit_on_interrupt(*_) -> None:
  """Ctrl-C (SIGINT) ends the command at once: what the command asked to undo on an interrupt
  (gptjax.files.undo_on_interrupt: a lock, a half-written directory) is undone, one line, exit
  130. A command that has something to finish first takes SIGINT over (`interrupts_raise`, or its
  own handler). The main thread and the watcher below may both get here: one line either way."""
  if not _exiting.acquire(blocking=False):
    threading.Event().wait()  # the other one is exiting the process
  files = sys.modules.get("gptjax.files")
  if files is not None:
    files.run_interrupt_undos()
  if "multiprocessing" in sys.modules:  # a prepare's worker processes stop with it
    for child in sys.modules["multiprocessing"].active_children():
      child.kill()
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
  up after itself; run_command then ends it with one line and exit status 130."""
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, signal.default_int_handler)


def config_lib_flag(values, overrides_from: list[str]) -> None:
  """The --config flag (ml_collections' config_file flag, lock_config) on `values`, reading its
  --config.<field> overrides from `overrides_from` when the flags are parsed."""
  from ml_collections import config_flags
  config_flags.DEFINE_config_file(
      "config",
      None, "Preset: a shipped preset's name (tiny_char, 350M_1024, ...), or a .py or "
      "nanoGPT-style .json file. Override its fields with --config.<field>=<value> (every field "
      "is listed below).",
      flag_values=values,
      lock_config=True,
      sys_argv=overrides_from)


def drop_background_noise() -> None:
  """Keeps what Orbax's background threads print about a failure that gptjax reports itself.

  A checkpoint save that fills the disk, or a restore of a damaged file, fails in Orbax's threads:
  each thread logs its traceback (a full disk: six of them), and TensorStore's callbacks for the
  reads and writes left behind raise "Event loop is closed" as unraisable exceptions (twenty), or
  asyncio logs their futures' exceptions as never retrieved. The failure itself reaches the main
  thread, where it is one `error:` line or one `note:`. Installed once per process.
  """
  import logging
  from gptjax.errors import disk_full
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


def preset_argument() -> str | None:
  """The preset as the running command's --config gave it (a name or a path), None without one."""
  value = command_line.config_value(sys.argv)
  return None if value is None else value.split(f"{command_line.PRESET_LOADER}:", 1)[-1]
