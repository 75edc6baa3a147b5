"""How much RAM the machine has and has free, read from /proc/meminfo (stdlib only, no torch)."""

from __future__ import annotations


def ram_info() -> tuple[int | None, int | None]:
    """(total, available) RAM in bytes; None for what cannot be read (no /proc, an unusual kernel)."""
    try:
        fields = {}
        with open("/proc/meminfo") as stream:
            for line in stream:
                key, value = line.split(":", 1)
                fields[key] = int(value.split()[0]) * 1024
        return fields["MemTotal"], fields.get("MemAvailable", fields.get("MemFree"))
    except (OSError, KeyError, ValueError):
        return None, None
