"""Depth backends (DVD video depth, plane-sweep stereo, user files), SfM alignment and metrics."""
