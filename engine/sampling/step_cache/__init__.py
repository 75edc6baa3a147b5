"""Faster sampling: step caches (skip transformer work on steps whose output barely changes) and regional
compilation. One module per method; `run.py` installs what a MODEL asks for around one `sample()` call.

Settings (torch-free, used by nodes and recipes): engine/sampling/step_cache/settings.py.
"""
