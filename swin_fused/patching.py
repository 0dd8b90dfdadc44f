"""`patch(model)` / `unpatch(model)`: swap the fused op into an existing Swin model, in place.

Each family adapter in swin_fused.families names the method it replaces (METHOD), finds its modules
(targets), says why a module cannot be fused (unsupported) and provides the replacement (fused).
Patching binds the replacement on the instance, so parameters, buffers and state_dict stay exactly
the same objects and keys; unpatch deletes the binding and the class's own method is back.
"""
import importlib
import logging
import types

from swin_fused.ops import fallback

FAMILIES = ("article", "torchvision", "timm")
log = logging.getLogger("swin_fused")


def _families():
    return [importlib.import_module(f"swin_fused.families.{name}") for name in FAMILIES]


def _is_patched(module, family):
    bound = module.__dict__.get(family.METHOD)
    return getattr(bound, "__func__", None) is family.fused


def patch(model):
    """Replace the shifted-window attention of every Swin block in `model` with the fused op.

    Returns the model. Idempotent. A block the kernels cannot serve keeps its own forward, with the
    reason warned (an error under SWIN_FUSED_STRICT=1). Raises ValueError when the model has no
    block of a supported family (the article's reference model, torchvision, timm).
    """
    fused, kept = 0, 0
    for family in _families():
        for module in family.targets(model):
            reason = family.unsupported(module)
            if reason is not None:
                fallback(f"{type(module).__name__} keeps its own forward: {reason}")
                kept += 1
                continue
            if not _is_patched(module, family):
                setattr(module, family.METHOD, types.MethodType(family.fused, module))
            fused += 1
    if fused + kept == 0:
        raise ValueError(
            f"swin_fused.patch found no shifted-window attention to fuse in {type(model).__name__}: "
            "supported are swin_fused.reference, torchvision.models.swin_* / swin_v2_* and timm's "
            "swin_* / swinv2_* models")
    log.info("swin_fused: fused %d attention layers of %s (%d kept their own forward)",
             fused, type(model).__name__, kept)
    return model


def unpatch(model):
    """Undo `patch`: every patched block gets its class's own method back. Returns the model."""
    for family in _families():
        for module in family.targets(model):
            if _is_patched(module, family):
                delattr(module, family.METHOD)
    return model


def patched_count(model):
    """How many blocks of `model` currently run the fused op."""
    return sum(_is_patched(m, f) for f in _families() for m in f.targets(model))
