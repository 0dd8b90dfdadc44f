from setuptools import setup

CIFAR = ["tqdm", "tensorboard", "matplotlib"]
# the optional model families the tests patch; MONAI's SwinUNETR needs einops
FAMILIES = ["timm", "monai", "einops", "transformers"]

setup(
    name="swin-fused",
    version="0.1.0",
    description="Fused Triton shifted-window attention for Swin Transformers (forward and backward)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # kernels/ is Triton code only; it installs as swin_fused.kernels, never as a top-level `kernels`
    packages=["swin_fused", "swin_fused.kernels", "swin_fused.families", "swin_fused.cifar"],
    package_dir={"swin_fused.kernels": "kernels"},
    install_requires=["torch>=2.11", "triton>=3.6", "torchvision>=0.26", "numpy"],
    extras_require={
        "cifar": CIFAR,
        "test": ["pytest", "pytest-benchmark"] + FAMILIES + CIFAR,
    },
)
