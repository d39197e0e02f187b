"""One writer per run directory: `<run_dir>/lock` names the process that trains into it.

Two trainings writing one directory interleave their checkpoints and metrics. The lock is an
advisory lock on the file (gptjax.files.try_lock: flock, or LockFileEx on Windows), which the OS
drops when its holder dies, so a run killed with kill -9 leaves no lock behind, only the file
naming it: the next run takes it over with a note. A run that ends, fails or is stopped by Ctrl-C
removes the file, and a run directory it created for nothing (it failed before its first write)
too. Where the file system has no locks (some network mounts), the holder's pid on this host
decides. Only process 0 of a multi-host run takes it.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time

from gptjax import files
from gptjax.errors import UserError, disk_full, disk_full_as_error


class RunLock:
  """Held from `acquire()` to `release()`; a second writer gets a UserError."""

  def __init__(self, run_dir: str):
    self.run_dir = run_dir
    self.path = os.path.join(run_dir, "lock")
    self.file = None
    self.created = False  # whether acquire() made the run directory

  def acquire(self) -> "RunLock":
    self.created = not os.path.isdir(self.run_dir)
    try:
      os.makedirs(self.run_dir, exist_ok=True)
    except OSError as e:  # checked before (training.run.check_out_dir), but a disk can change
      if disk_full(e):
        raise
      raise UserError(f"run directory {self.run_dir!r} cannot be made ({e.strerror or e}). Fix: "
                      f"choose a directory you can write, e.g. --config.out_dir=out.") from None
    files.add_interrupt_undo(self.release)
    try:
      return self._take()
    except BaseException:
      self.release()
      raise

  def _take(self) -> "RunLock":
    while True:
      self.file = open(self.path, "a+")
      self.file.seek(0)
      holder = self.file.read().strip()
      try:
        held_elsewhere = not files.try_lock(self.file.fileno())
      except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
          raise
        held_elsewhere = _alive(holder)  # no locks here: is the named holder alive on this host?
      if held_elsewhere or files.still_at(self.file, self.path):
        break
      self.file.close()  # its holder removed it as we took it: take the new one
    if held_elsewhere:
      self.file.close()
      self.file = None
      raise UserError(
          f"run directory {self.run_dir!r} is in use by another training ({_describe(holder)}). "
          f"Fix: wait for it to finish or stop it, or train into another directory with "
          f"--config.model_name=<new name>.")
    if holder:
      print(f"note: taking over {self.path} from {_describe(holder)}, which is no longer running.",
            file=sys.stderr,
            flush=True)
    payload = json.dumps(
        dict(pid=os.getpid(), host=socket.gethostname(),
             since=time.strftime("%Y-%m-%d %H:%M:%S"))) + "\n"
    with disk_full_as_error(self.path, "taking the run directory's lock"):
      os.ftruncate(self.file.fileno(), 0)
      os.pwrite(self.file.fileno(), payload.encode(), 0)
    return self

  def release(self) -> None:
    """Removes the file while still holding it, then drops the lock (again: nothing); a run
    directory that acquire() made and that holds nothing else goes too."""
    files.remove_interrupt_undo(self.release)
    if self.file is not None:
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass
      self.file.close()  # closing drops the flock
      self.file = None
    if self.created:  # a run that wrote a file keeps its directory; one that did not, goes
      self.created = False
      for root, _, names in os.walk(self.run_dir, topdown=False):
        try:
          if not names:
            os.rmdir(root)
        except OSError:  # not empty: it holds a file somewhere below
          pass


def _describe(holder: str) -> str:
  try:
    info = json.loads(holder)
    return f"pid {info['pid']} on {info['host']}, since {info['since']}"
  except (ValueError, KeyError, TypeError):
    return "an unknown process"


def _alive(holder: str) -> bool:
  try:
    info = json.loads(holder)
  except ValueError:
    return False
  if not isinstance(info, dict) or info.get("host") != socket.gethostname():
    return bool(info)  # another host's claim cannot be checked from here: respected
  try:
    os.kill(int(info["pid"]), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, KeyError, ValueError):
    return True
  return True
