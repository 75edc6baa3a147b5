"""Scale-out: the Ray executor backend (`fluxgraph serve --executor ray`, docs/scaleout.md).

Importing this package imports no Ray; `engine.backends.ray.backend` does, and the server imports it only
when `--executor ray` is asked for (Ray is the optional extra `fluxgraph[ray]`).
"""
