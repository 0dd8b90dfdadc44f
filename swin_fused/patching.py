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
calls. torch.jit.script refuses a fused module (SCRIPT_REFUSAL); torch.jit.trace records the op.

A module is fused only where its code is what the adapter reproduces: the adapter recognises its
attributes and signature (`unrecognised`), no class between the module's class and the library's
defines a method the fused path replaces or no longer calls (the family's REPLACED), every
submodule the fused path skips runs the library's own forward, and the fused method computes what
the module's own does on a small input (swin_fused.verification, unless verify=False). Any other
module keeps its own code, with the reasons warned (an error in strict mode).
"""
import logging

import torch

from swin_fused import verification
from swin_fused.families import article, huggingface, monai, timm, torchvision, torchvision_video
from swin_fused.ops import fallback

FAMILIES = (article, torchvision, torchvision_video, timm, monai, huggingface)
log = logging.getLogger("swin_fused")


SCRIPT_REFUSAL = ("swin_fused: torch.jit.script cannot hold {}'s fused Triton attention; script "
                  "swin_fused.unpatch(model) (the eager model), or use torch.export or "
                  "torch.jit.trace, which record the fused op")


class FusedModule:
    """Base of every fused class; `unfused_class` is the class it was made from."""

    unfused_class = None

    def __prepare_scriptable__(self):
        # torch.jit.script calls this on every submodule before it compiles any
        raise RuntimeError(SCRIPT_REFUSAL.format(self.unfused_class.__name__))

    def __reduce_ex__(self, protocol):
        # pickled as the unfused class, which has an importable name, plus the marker to fuse it
        _, _, *state = super().__reduce_ex__(protocol)
        return (_new_fused, (self.unfused_class,), *state)


_fused_classes = {}


def _fused_class(cls):
    """The fused subclass of `cls`, a family's attention class or a subclass of one, made once."""
    if cls not in _fused_classes:
        family = next((f for f in FAMILIES if issubclass(cls, f.classes())), None)
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
    for family in FAMILIES:
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


def _from_library(cls, family):
    return cls.__module__ == family.LIBRARY or cls.__module__.startswith(family.LIBRARY + ".")


def _overrides(cls, family):
    """Reasons: the classes between `cls` and the library's own that define a method the fused
    path replaces or no longer calls."""
    reasons = []
    for klass in cls.__mro__:
        if _from_library(klass, family):
            break
        reasons += [f"{klass.__qualname__} overrides {name}, which the fused path "
                    f"{'replaces' if name == family.METHOD else 'no longer calls'}"
                    for name in family.REPLACED if name in vars(klass)]
    return reasons


def _foreign_skipped(module, family):
    """Reasons: submodules the fused path no longer calls whose forward is not the library's or
    torch's own."""
    reasons = []
    skipped = family.skipped(module) if hasattr(family, "skipped") else {}
    for name, sub in skipped.items():
        owner = next(k for k in type(sub).__mro__ if "forward" in vars(k))
        if not (_from_library(owner, family) or owner.__module__.startswith("torch.")):
            reasons.append(f"{name} runs {owner.__qualname__}.forward, which the fused path "
                           "does not call")
    return reasons


def _eager_reasons(module, family):
    """Every reason `module` keeps its own code, before the check; empty when it can be fused."""
    reasons = family.unrecognised(module)
    if reasons:
        return reasons
    return (family.unsupported(module) + _overrides(type(module), family)
            + _foreign_skipped(module, family))


def patch(model, *, verify=True):
    """Replace the shifted-window attention of every Swin block in `model` with the fused op.

    Returns the model. Idempotent. A layer keeps its own code, with the reasons warned (an error
    under SWIN_FUSED_STRICT=1), where the kernels cannot serve its configuration, where its code
    is not what the adapter reproduces (an attribute or signature it does not recognise, a
    subclass's override of a method the fused path replaces), or where the fused method disagrees
    with the layer's own on a small input: `verify` checks each distinct layer configuration once,
    at patch time, on the layer's device and dtype (swin_fused.verification); verify=False skips
    that check. Raises ValueError when the model has no block of a supported family (the
    article's reference model, torchvision's image and video Swin, timm, MONAI's SwinUNETR,
    Hugging Face's Swin, Swinv2, DonutSwin and MaskFormerSwin).
    """
    fused, kept = 0, 0
    for family in FAMILIES:
        classes = family.classes()
        for module in model.modules():
            if not isinstance(module, classes):
                continue
            if isinstance(module, FusedModule):
                fused += 1
                continue
            reasons = _eager_reasons(module, family)
            if not reasons:
                module.__class__ = _fused_class(type(module))
                disagreement = verification.disagreement(family, module) if verify else None
                if disagreement:
                    module.__class__ = module.unfused_class
                    reasons = [disagreement]
            if reasons:
                fallback(f"{type(module).__name__} keeps its own {family.METHOD}: "
                         f"{'; '.join(reasons)}")
                kept += 1
                continue
            fused += 1
    swaps = _functionals()
    _swap_graph_calls(model, swaps)
    fused += len(_graph_calls(model, set(swaps.values())))
    if fused + kept == 0:
        raise ValueError(
            "swin_fused.patch found no shifted-window attention to fuse in "
            f"{type(model).__name__}: "
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
