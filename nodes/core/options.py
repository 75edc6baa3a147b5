"""Option lists and limits shared by the core nodes (torch-free, so declaring nodes stays cheap)."""

MAX_RESOLUTION = 16384
UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
CROP_METHODS = ("disabled", "center")
