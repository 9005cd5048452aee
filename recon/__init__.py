"""DVD-Splat: video -> camera poses -> video depth -> fused points -> Gaussian Splatting."""

__version__ = "0.1.0"
