"""Reports: the data model (model.py), symbolization (symbolize.py), the kernel's text layouts
(text.py) and JSON (json.py)."""
