"""One writer per run directory in a bucket: `<run_dir>/lock` is a lease, not a file lock.

A Cloud Storage bucket has no locks and no process that could drop one when its holder dies. What
it does guarantee is that a write conditioned on an object's generation (`ifGenerationMatch`;
0 means "must not exist") succeeds for exactly one of several racing writers. The lease uses only
that:

- acquire: a missing or empty lock object is free and is written conditioned on that state. A
  held one is respected while its holder lives: on this host while its pid runs; from another
  host while its generation moves (its holder rewrites it every ttl/3 s, the heartbeat). A dead
  holder's (a gone pid; a generation that did not move for ttl s) is taken over with a write
  conditioned on the generation seen, which at most one contender wins. No clocks are compared.
- heartbeat (a thread): a write conditioned on the holder's own generation. When it fails the lease
  was taken over: `lost` is set, the loop stops before its next save (the fence), and a note says
  so.
- release: a conditional write that empties the object. Not a delete: a store that ignores
  conditions on deletes (fake-gcs-server does) would let a fenced holder delete its successor's.

Only process 0 of a multi-host run holds it, as with the file lock (training.lock).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time

from gptjax.errors import UserError

TTL_S = float(os.environ.get("GPTJAX_LEASE_TTL_S", "60"))


class LeaseLock:
  """The run lock of a gs:// run directory; the same interface as training.lock.RunLock."""

  def __init__(self, run_dir: str, ttl_s: float = TTL_S):
    from google.api_core import exceptions
    from google.cloud import storage
    bucket, _, prefix = run_dir.split("://", 1)[1].partition("/")
    self.run_dir, self.ttl_s = run_dir, ttl_s
    self.path = f"{run_dir.rstrip('/')}/lock"
    self.blob = storage.Client().bucket(bucket).blob(f"{prefix.rstrip('/')}/lock".lstrip("/"))
    self.PreconditionFailed, self.NotFound = exceptions.PreconditionFailed, exceptions.NotFound
    self.generation, self.lost, self.stopped = None, False, threading.Event()
    self.identity = dict(pid=os.getpid(), host=socket.gethostname())
    self.thread = None

  def _read(self):
    try:
      data = self.blob.download_as_bytes()
    except self.NotFound:
      return b"", 0
    return data, self.blob.generation

  def _write_if(self, data: bytes, generation: int) -> bool:
    try:  # a small object goes up as one multipart upload, whose precondition every store honours
      self.blob.upload_from_string(data, if_generation_match=generation)
    except self.PreconditionFailed:
      return False
    self.generation = self.blob.generation
    return True

  def _payload(self) -> bytes:
    return json.dumps(dict(self.identity, since=time.strftime("%Y-%m-%d %H:%M:%S"))).encode()

  def acquire(self) -> "LeaseLock":
    while True:
      data, generation = self._read()
      if not data.strip():  # missing, or emptied by a release: free
        if self._write_if(self._payload(), generation):
          break
        continue  # another writer came first: look again
      holder = _describe(data)
      if not self._dead(data, generation):
        raise UserError(
            f"run directory {self.run_dir!r} is in use by another training ({holder}: its lease "
            f"{self.path} was renewed within {self.ttl_s:.0f} s). Fix: wait for it to finish or "
            f"stop it, or train into another directory with --config.model_name=<new name>.")
      if self._write_if(self._payload(), generation):
        print(f"note: taking over {self.path} from {holder}, which is no longer running.",
              file=sys.stderr,
              flush=True)
        break
    self.thread = threading.Thread(target=self._heartbeat, daemon=True)
    self.thread.start()
    return self

  def _dead(self, data: bytes, generation: int) -> bool:
    """Whether the holder is gone: its pid, on this host, is not running; or, on another host,
    it has not renewed the lease for ttl s."""
    try:
      info = json.loads(data)
      if info.get("host") == socket.gethostname():
        os.kill(int(info["pid"]), 0)
        return info["pid"] == os.getpid()  # running: alive (unless it is this very process)
    except ProcessLookupError:
      return True
    except PermissionError:  # another user's process: running
      return False
    except (ValueError, KeyError, TypeError, AttributeError):
      pass
    deadline = time.monotonic() + self.ttl_s
    while time.monotonic() < deadline:
      time.sleep(min(1.0, self.ttl_s / 4))
      if self._read()[1] != generation:
        return False
    return True

  def _heartbeat(self) -> None:
    while not self.stopped.wait(max(1.0, self.ttl_s / 3)):  # GCS: about 1 write/s per object
      try:
        renewed = self._write_if(self._payload(), self.generation)
      except Exception:  # a network hiccup: the next beat tries again, within the ttl
        continue
      if not renewed:
        self.lost = True
        print(f"note: the lease {self.path} was taken over by another training; this one stops.",
              file=sys.stderr,
              flush=True)
        return

  def release(self) -> None:
    """Empties the lock object if still held (again: nothing)."""
    self.stopped.set()
    if self.thread is not None:
      self.thread.join()
      self.thread = None
      if not self.lost:
        try:
          self._write_if(b"", self.generation)
        except Exception:  # a lease left behind is taken over after ttl s
          pass


def _describe(data: bytes) -> str:
  try:
    info = json.loads(data)
    return f"pid {info['pid']} on {info['host']}, since {info['since']}"
  except (ValueError, KeyError, TypeError):
    return "an unknown process"
