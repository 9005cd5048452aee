"""Gaussian Splatting: point-cloud initialisation, rendering (gsplat on CUDA, PyTorch on CPU), training."""
