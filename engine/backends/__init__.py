"""How a queued prompt runs: the backend contract, the in-process backend, and Ray actors (`ray/`).

Backends never import the server; the server hands them prompts and receives events through `RunSink`.
"""
