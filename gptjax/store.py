"""Paths that may be URLs: a run directory on a local disk or in a Google Cloud Storage bucket.

  store.join("gs://bucket/runs", "tiny")  -> "gs://bucket/runs/tiny"
  store.write_text(path, text)            # a local file: atomic (files.write_atomic); an object:
                                          # one upload, which a store makes whole or nothing

Local paths go through `os` as always; URLs through etils.epath (fsspec and gcsfs underneath: pip
install gcsfs, or the gcs extra). An object store has no directories, no appends, no renames and
no locks: `isdir` is "holds objects under this prefix", `rename` copies and deletes (not atomic:
used only to set a damaged checkpoint aside), metrics.jsonl is rewritten whole (training.metrics)
and the run lock is a lease (training.lease). Orbax writes checkpoints to `gs://` through TensorStore by
itself; it cannot write `s3://` (0.12), so URL_SCHEMES holds gs only.
"""

from __future__ import annotations

import os
import shutil

from gptjax import files

# The URL schemes an out_dir may use besides a local path: those Orbax writes checkpoints to.
URL_SCHEMES = ("gs",)


def is_url(path: str) -> bool:
  return "://" in str(path)


def scheme_problem(path: str) -> str | None:
  """Why `path` cannot hold a run directory (an unsupported URL scheme), or None."""
  scheme = str(path).split("://")[0] if is_url(path) else ""
  if scheme and scheme not in URL_SCHEMES:
    return f"{scheme}:// is not supported: Orbax writes checkpoints only to local disks and gs://"
  return None


def _epath(path: str):
  try:
    from etils import epath
    import gcsfs  # noqa: F401  (epath reaches gs:// through fsspec's gcsfs)
  except ImportError as e:
    from gptjax.errors import UserError
    raise UserError(f"{path!r} is a Cloud Storage URL, and reading it needs gcsfs ({e}). Fix: "
                    f"pip install gcsfs (the gcs extra: pip install -e '.[gcs]').") from None
  return epath.Path(path)


def join(*parts: str) -> str:
  return os.path.join(*(str(p) for p in parts))


def absolute(path: str) -> str:
  return str(path) if is_url(path) else os.path.abspath(path)


def exists(path: str) -> bool:
  return _epath(path).exists() if is_url(path) else os.path.exists(path)


def isfile(path: str) -> bool:
  return _epath(path).is_file() if is_url(path) else os.path.isfile(path)


def isdir(path: str) -> bool:
  return _epath(path).is_dir() if is_url(path) else os.path.isdir(path)


def listdir(path: str) -> list[str]:
  """The names directly under `path`; [] when there is nothing."""
  if not is_url(path):
    return os.listdir(path) if os.path.isdir(path) else []
  folder = _epath(path)
  return [child.name for child in folder.iterdir()] if folder.is_dir() else []


def makedirs(path: str) -> None:
  if not is_url(path):  # an object store makes its prefixes with the objects
    os.makedirs(path, exist_ok=True)


def read_text(path: str) -> str:
  if is_url(path):
    return _epath(path).read_text(encoding="utf-8")
  with open(path, encoding="utf-8") as f:
    return f.read()


def read_bytes(path: str) -> bytes:
  if is_url(path):
    return _epath(path).read_bytes()
  with open(path, "rb") as f:
    return f.read()


def write_text(path: str, text: str, resume: str = "") -> None:
  """Writes `text` whole: locally through a renamed temporary file, to a store as one upload."""
  if is_url(path):
    _epath(path).write_text(text, encoding="utf-8")
  else:
    files.write_atomic(path, text, resume)


def write_bytes(path: str, data: bytes) -> None:
  if is_url(path):
    _epath(path).write_bytes(data)
  else:
    with open(path, "wb") as f:
      f.write(data)


def copy_file(source: str, target: str) -> None:
  if is_url(source) or is_url(target):
    write_bytes(target, read_bytes(source))
  else:
    shutil.copyfile(source, target)


def rename(path: str, target: str) -> None:
  """Moves a file or a folder; in a store by copying each object and deleting it (not atomic)."""
  if is_url(path):
    _epath(path).rename(target)
  else:
    os.rename(path, target)


def remove_tree(path: str) -> None:
  if is_url(path):
    _epath(path).rmtree(missing_ok=True)
  else:
    shutil.rmtree(path, ignore_errors=True)


def local_path(path: str) -> str:
  """A local directory standing in for `path` where a file must be local (a memmapped token
  cache): `path` itself, or ~/.cache/gptjax/<scheme>/<bucket>/<prefix> for a URL."""
  if not is_url(path):
    return path
  scheme, rest = str(path).split("://", 1)
  return os.path.join(os.path.expanduser("~/.cache/gptjax"), scheme, rest)
