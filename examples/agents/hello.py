#!/usr/bin/env python3
"""Example agent: reports where it runs, then prints its result line."""
import json
import os
import platform
import sys

print(f"hello from {platform.node()}: kernel {platform.release()}, python {sys.version.split()[0]}")
memory = os.environ.get("BLINK_MEMORY_DIR", "/var/blink/memory")
print(json.dumps({
    "event": "execution_result",
    "kernel_release": platform.release(),
    "python": sys.version.split()[0],
    "memory_keys": sorted(os.listdir(memory)) if os.path.isdir(memory) else [],
}))
