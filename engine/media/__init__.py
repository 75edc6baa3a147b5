"""IMAGE / MASK tensors <-> PIL and PNG files, shared by every node pack.
"""
