"""A preset whose get_config() fails (tests: one clear error, no traceback)."""


def get_config():
  raise RuntimeError("this preset is broken on purpose")
