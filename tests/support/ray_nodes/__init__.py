"""Test-only node pack for the Ray workers (tests/test_ray_backend.py): the server tests' toy nodes, importable
by name in a worker process (`RayOptions.node_packages=["nodes", "tests.support.ray_nodes"]`)."""
