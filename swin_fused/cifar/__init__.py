"""`python -m swin_fused.cifar`: the seed article's CIFAR-10 workflow as a command-line tool.

    python -m swin_fused.cifar train --data-dir data --out runs/swin   # train, checkpoint, plot
    python -m swin_fused.cifar eval --data-dir data --checkpoint runs/swin/best.pt
    python -m swin_fused.cifar predict --checkpoint runs/swin/best.pt cat.png https://.../dog.jpg
    python -m swin_fused.cifar convert article_net.pth runs/article/converted.pt

The model is the article's `swin_cifar(patch_size=2, n_classes=10, mlp_ratio=1)`, fused with
`swin_fused.patch` unless `--no-fused`. Needs the [cifar] extra (tqdm, tensorboard, matplotlib).
"""
