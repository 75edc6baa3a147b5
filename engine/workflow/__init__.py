"""ComfyUI's editor workflow JSON ("UI format"): reader, widget values, subgraphs, the UI->API converter
and the API->UI exporter. Imports only `engine.core`.
"""
