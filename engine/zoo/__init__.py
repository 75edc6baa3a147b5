"""The tiny model zoo: deterministic tiny random models of the real architectures, written in the file
layouts people download. Test and demo data (`fluxgraph models prepare`), not loading code.
"""
