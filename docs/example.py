"""swin_fused.patch on the seed article's CIFAR Swin: the fused model computes what the eager one
does. Runs on a GPU, or on a CPU with the Triton kernels in Triton's interpreter (slow, but the
same kernels).

    python docs/example.py
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is imported: CPU kernels

import swin_fused  # noqa: E402  (after TRITON_INTERPRET)
from swin_fused.reference import swin_cifar  # noqa: E402

device = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)
model = swin_cifar(patch_size=2, n_classes=10, mlp_ratio=1).to(device).eval()
images = torch.randn(2, 3, 32, 32, device=device)
with torch.no_grad():
    eager = model(images)
    swin_fused.patch(model)  # in place: same parameters, same state_dict
    fused = model(images)
blocks = sum(type(m).__name__.startswith("Fused") for m in model.modules())
print(f"{blocks} blocks fused on {device}; largest difference from eager: "
      f"{(fused - eager).abs().max().item():.1e}")
swin_fused.unpatch(model)  # the eager attention again
