"""DVD-Splat: video -> camera poses -> video depth -> fused points -> Gaussian Splatting."""

import os as _os

# OpenMP's default busy-wait makes every small torch op on the CPU wait for a busy thread when the machine
# is shared (measured: ~25 ms vs 0.7 ms per op); it only takes effect if set before torch is imported.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
