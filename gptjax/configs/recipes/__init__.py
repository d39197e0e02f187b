"""Recipes: presets that reproduce a published run (`--config=recipes/<name>`)."""
