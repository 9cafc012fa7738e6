"""Device choice: CUDA when present, otherwise the CPU."""

import torch


def default_device() -> torch.device:
    """Return ``cuda`` when a GPU is visible to torch, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(name: str = "auto") -> torch.device:
    """Turn "auto", "cpu", "cuda" or "cuda:N" into a device, failing clearly when CUDA is absent."""
    if name in (None, "", "auto"):
        return default_device()
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but torch sees no GPU; use --device cpu or auto")
    return device
