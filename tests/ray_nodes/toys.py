"""The server tests' toy nodes (TestSleep with progress, TestShowInt, TestFail, TestPreview, ...)."""

from tests.test_server_support import TOY_NODES

NODES = list(TOY_NODES)
