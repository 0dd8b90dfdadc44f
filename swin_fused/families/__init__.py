"""Adapters that bind the fused op into each Swin model family: article, torchvision, timm."""
