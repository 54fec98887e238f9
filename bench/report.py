"""What every benchmark needs to report its numbers: the device's name, a GPU synchronisation
before a clock is read, and the table printed and (with --out) written atomically."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any


def cpu_name() -> str:
    """The processor's model name (/proc/cpuinfo), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: Any) -> str:
    """A torch device in words: the GPU's name, or the CPU's with torch's thread count."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} CPU ({torch.get_num_threads()} threads)"


def sync(device: Any) -> None:
    """Wait for the GPU's queued work (nothing on the CPU)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def emit(text: str, out: str | Path | None) -> None:
    """Print the table and, with `out`, write it there (temporary name, then renamed)."""
    print(text)
    if out:
        from backend.files import write_text_atomic

        write_text_atomic(out, text)
