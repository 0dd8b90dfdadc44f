"""Adapters that fuse the op into each Swin model family: article, torchvision (image and video),
timm, MONAI, Hugging Face.

Each adapter names its attention classes (`classes`), the method their fused subclass overrides
(METHOD, replaced by `fused`, or by `fused_for(cls)` where the classes differ in signature) and why
a module cannot be fused (`unsupported`). Where the fused method no longer calls submodules the
eager one calls (`skipped`: article, timm, MONAI, Hugging Face), hooks on those
would never fire, so a module with such a hook runs its eager method, with the hook named in the
warning (an error in strict mode).
"""


def hooked(modules):
    """Names of `modules` ({name: module}) that have a forward or backward hook or pre-hook."""
    return [name for name, m in modules.items()
            if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
            or m._backward_pre_hooks]


def hooks_reason(module, names):
    """The fallback reason for a fused module whose skipped submodules `names` have hooks."""
    return (f"{type(module).__name__} has hooks on {', '.join(names)}, which the fused forward "
            "does not call")
