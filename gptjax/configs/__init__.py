"""The presets shipped with gptjax: `--config=<name>` loads `<name>.py` from here (gptjax/presets.py)."""
