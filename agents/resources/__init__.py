"""What this process may use, the bottom of ``agents``: ``hardware`` (cgroup CPU and memory limits, CUDA, the
training profile that fits them) and ``memory`` (the thrash watchdog). Imports nothing else of ``agents``.
Names load on first use.
"""

from typing import TYPE_CHECKING

from datafeeds.lazy import lazy_exports

if TYPE_CHECKING:
    from .hardware import (
        HardwareError, Profile, Resources, check_fits, choose_profile, detect, estimate_train_memory, require_cuda,
    )

_EXPORTS = {name: ".hardware" for name in ("HardwareError", "Profile", "Resources", "detect", "choose_profile",
                                           "require_cuda", "estimate_train_memory", "check_fits")}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = list(_EXPORTS)
