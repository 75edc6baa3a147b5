"""How a queued prompt runs: the backend contract (`contract`), the in-process backend, and Ray actors (`ray/`).

Backends never import the server; the server hands them prompts and receives events through `RunSink`.
`factory.make_backend` picks one from the server's config; `runtime.Runtime` is the composition root.
"""
