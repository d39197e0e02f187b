"""A preset whose get_config() returns no ConfigDict (tests: one clear error)."""


def get_config():
  return {"n_layer": 2}
