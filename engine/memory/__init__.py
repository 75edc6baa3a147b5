"""The memory manager: where every model's weights live (disk, CPU, GPU) under a byte budget.

`manager.MemoryManager` is the entry point; the other modules are its parts: budgets and settings, the
placement plan, accounting, memory-mapped files, streaming, patches, OOM recovery, and the torch backend.
`system_ram` reads /proc/meminfo (stdlib only). Nothing here imports torch at import time.
"""
