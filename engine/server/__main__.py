"""`python -m engine.server [options]`: the same as `fluxgraph serve`."""

from engine.server import main

main()
