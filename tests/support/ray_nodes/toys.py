"""The server tests' toy nodes (TestSleep with progress, TestShowInt, TestFail, TestPreview, ...)."""

from tests.support.server import TOY_NODES

NODES = list(TOY_NODES)
