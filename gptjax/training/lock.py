"""One writer per run directory: `<run_dir>/lock` names the process that trains into it.

Two trainings writing one directory interleave their checkpoints and metrics. The lock is an
advisory lock on the file (gptjax.files.try_lock: flock, or LockFileEx on Windows), which the OS
drops when its holder dies, so a run killed with
kill -9 leaves no lock behind, only the file naming it: the next run takes it over with a note.
Where the file system has no locks (some network mounts), the holder's pid on this host decides.
Only process 0 of a multi-host run takes it.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time

from gptjax import files
from gptjax.errors import UserError, disk_full_as_error


class RunLock:
  """Held from `acquire()` to `release()`; a second writer gets a UserError."""

  def __init__(self, run_dir: str):
    self.run_dir = run_dir
    self.path = os.path.join(run_dir, "lock")
    self.file = None

  def acquire(self) -> "RunLock":
    os.makedirs(self.run_dir, exist_ok=True)
    self.file = open(self.path, "a+")
    self.file.seek(0)
    holder = self.file.read().strip()
    try:
      held_elsewhere = not files.try_lock(self.file.fileno())
    except OSError as e:
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
        raise
      held_elsewhere = _alive(holder)  # no locks here: is the named holder alive on this host?
    if held_elsewhere:
      self.file.close()
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
    try:
      with disk_full_as_error(self.path, "taking the run directory's lock"):
        os.ftruncate(self.file.fileno(), 0)
        os.pwrite(self.file.fileno(), payload.encode(), 0)
    except BaseException:
      self.file.close()
      raise
    return self

  def release(self) -> None:
    """Empties the file (an empty lock file is a free one) and drops the lock."""
    if self.file is not None:
      self.file.truncate(0)
      self.file.close()  # closing drops the flock
      self.file = None


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
