"""`patch(model)` / `unpatch(model)`: swap the fused op into an existing Swin model, in place.

Patching changes the class of each attention module to a fused subclass of its own class
(`FusedSwinTransformerBlock`, `FusedShiftedWindowAttentionV2`, `FusedMyBlock` for a user's
subclass MyBlock) that overrides the one method its family replaces; unpatch swaps the class back.
Parameters, buffers and state_dict stay the same objects and keys, and the fused method belongs to
the class, so whatever copies or re-creates a module keeps it: torch.save / torch.load (a fused
module pickles as the class it was made from plus a marker, so any subclass loads, in a fresh
process too), copy.deepcopy, DataParallel replicas, FSDP2, checkpointing, torch.compile,
torch.export, FX.
An FX graph that calls torchvision's `shifted_window_attention(_3d)` is patched by swapping its
calls.
"""
import importlib
import logging

import torch

from swin_fused.ops import fallback

FAMILIES = ("article", "torchvision", "torchvision_video", "timm", "monai", "huggingface")
log = logging.getLogger("swin_fused")


def _families():
    return [importlib.import_module(f"swin_fused.families.{name}") for name in FAMILIES]


class FusedModule:
    """Base of every fused class; `unfused_class` is the class it was made from."""

    unfused_class = None

    def __reduce_ex__(self, protocol):
        # pickled as the unfused class, which has an importable name, plus the marker to fuse it
        _, _, *state = super().__reduce_ex__(protocol)
        return (_new_fused, (self.unfused_class,), *state)


_fused_classes = {}


def _fused_class(cls):
    """The fused subclass of `cls`, a family's attention class or a subclass of one, made once."""
    if cls not in _fused_classes:
        family = next((f for f in _families() if issubclass(cls, f.classes())), None)
        if family is None:
            raise TypeError(f"{cls.__qualname__} is not an attention class swin_fused can fuse")
        name = f"Fused{cls.__name__}"
        # a family whose classes differ in signature (Hugging Face) has a fused method per class
        method = family.fused_for(cls) if hasattr(family, "fused_for") else family.fused
        _fused_classes[cls] = type(name, (FusedModule, cls), {
            family.METHOD: method, "unfused_class": cls, "__module__": family.__name__,
            "__qualname__": name})
    return _fused_classes[cls]


def _new_fused(cls):
    """An empty fused module of the unfused class `cls`, for pickle to fill in."""
    fused = _fused_class(cls)
    return fused.__new__(fused)


_unfused_classes = {}


def _unfused_class(cls):
    """`cls` without the fused class in it: the unfused class itself, or for a class another
    library built on a fused one (FSDP2's FSDP<name>), the same class on the unfused one."""
    if cls.__dict__.get("unfused_class") is not None:
        return cls.unfused_class
    if cls not in _unfused_classes:
        bases = tuple(_unfused_class(b) if issubclass(b, FusedModule) else b for b in cls.__bases__)
        name = cls.__name__.replace("Fused", "", 1)
        namespace = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
        _unfused_classes[cls] = type(name, bases, {**namespace, "__qualname__": name})
    return _unfused_classes[cls]


def _functionals():
    """{eager functional: fused functional} of the families with FX-wrapped ones (torchvision)."""
    swaps = {}
    for family in _families():
        swaps.update(getattr(family, "functionals", dict)())
    return swaps


def _graph_calls(model, targets):
    """The call_function nodes of an FX GraphModule `model` whose target is in `targets`."""
    if not isinstance(model, torch.fx.GraphModule):
        return []
    return [n for n in model.graph.nodes if n.op == "call_function" and n.target in targets]


def _swap_graph_calls(model, swaps):
    nodes = _graph_calls(model, swaps)
    for node in nodes:
        node.target = swaps[node.target]
    if nodes:
        model.recompile()


def patch(model):
    """Replace the shifted-window attention of every Swin block in `model` with the fused op.

    Returns the model. Idempotent. A block the kernels cannot serve keeps its own forward, with the
    reasons warned (an error under SWIN_FUSED_STRICT=1). Raises ValueError when the model has no
    block of a supported family (the article's reference model, torchvision's image and video
    Swin, timm, MONAI's SwinUNETR, Hugging Face's Swin, Swinv2, DonutSwin and MaskFormerSwin).
    """
    fused, kept = 0, 0
    for family in _families():
        classes = family.classes()
        for module in model.modules():
            if not isinstance(module, classes):
                continue
            if isinstance(module, FusedModule):
                fused += 1
                continue
            reasons = family.unsupported(module)
            if reasons:
                fallback(f"{type(module).__name__} keeps its own forward: {'; '.join(reasons)}")
                kept += 1
                continue
            module.__class__ = _fused_class(type(module))
            fused += 1
    swaps = _functionals()
    _swap_graph_calls(model, swaps)
    fused += len(_graph_calls(model, set(swaps.values())))
    if fused + kept == 0:
        raise ValueError(
            f"swin_fused.patch found no shifted-window attention to fuse in {type(model).__name__}: "
            "supported are swin_fused.reference, torchvision.models.swin_* / swin_v2_* and "
            "torchvision.models.video.swin3d_* (also traced by torch.fx), timm's swin_* / "
            "swinv2_* models, MONAI's SwinUNETR and Hugging Face transformers' Swin, Swinv2, "
            "DonutSwin and MaskFormerSwin models")
    log.info("swin_fused: fused %d attention layers of %s (%d kept their own forward)",
             fused, type(model).__name__, kept)
    return model


def unpatch(model):
    """Undo `patch`: every fused module gets its own class back. Returns the model."""
    for module in model.modules():
        if isinstance(module, FusedModule):
            module.__class__ = _unfused_class(type(module))
    _swap_graph_calls(model, {f: e for e, f in _functionals().items()})
    return model


def patched_count(model):
    """How many attention layers of `model` currently run the fused op."""
    fused_calls = _graph_calls(model, set(_functionals().values()))
    return sum(isinstance(m, FusedModule) for m in model.modules()) + len(fused_calls)
