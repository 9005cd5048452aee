"""nerfstudio plugin: the `dvd-splat` method (splatfacto + the project's depth prior and fused-cloud init).

Registered through the `nerfstudio.method_configs` entry point as
`dvd-splat = "splat.nerfstudio.method:dvd_splat_method"`; without the installed entry point use
`NERFSTUDIO_METHOD_CONFIGS="dvd-splat=splat.nerfstudio.method:dvd_splat_method"`.
It reads a run directory exported by `recon export nerfstudio RUN` (transforms.json with
`depth_file_path`, `ply_file_path`, `depth_unit_scale_factor`).
"""
