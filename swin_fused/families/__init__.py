"""Adapters that fuse the op into each Swin model family: article, torchvision (image and video),
timm, MONAI, Hugging Face.

Each adapter names its attention classes (`classes`), the method their fused subclass overrides
(METHOD, replaced by `fused`, or by `fused_for(cls)` where the classes differ in signature) and,
for `patch`, what must hold before a module is fused:
- `unsupported(module)`: why the kernels cannot serve the module's configuration;
- `unrecognised(module)`: why the module's code does not look as the adapter expects (an attribute
  the fused path reads is missing, METHOD's signature changed, a library function it replaces was
  wrapped);
- REPLACED: the methods the fused path replaces or no longer calls; a class between a user's class
  and the family's own that defines one of them keeps the module eager, and so does a skipped
  submodule (`skipped`) whose forward is not the library's;
- `sample(module)`: a context yielding a small input for METHOD, on which patch compares the
  module's own METHOD with the fused one (swin_fused.verification).
Where the fused method no longer calls submodules the eager one calls (`skipped`: article, timm,
MONAI, Hugging Face), hooks on those would never fire, so a module with such a hook runs its eager
method, with the hook named in the warning (an error in strict mode).
"""
import inspect

import torch

_MISSING = object()


def hooked(modules):
    """Names of `modules` ({name: module}) that have a forward or backward hook or pre-hook."""
    return [name for name, m in modules.items()
            if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
            or m._backward_pre_hooks]


def hooks_reason(module, names):
    """The fallback reason for a fused module whose skipped submodules `names` have hooks."""
    return (f"{type(module).__name__} has hooks on {', '.join(names)}, which the fused forward "
            "does not call")


def _attribute(obj, dotted):
    for name in dotted.split("."):
        obj = getattr(obj, name, _MISSING)
        if obj is _MISSING:
            break
    return obj


def missing_attributes(module, names):
    """The reason, in a list, when `module` lacks any of the dotted attribute `names`."""
    missing = [name for name in names if _attribute(module, name) is _MISSING]
    if not missing:
        return []
    return [f"{type(module).__name__} has no {', '.join(missing)}, which the fused path reads"]


def signature_reason(cls, method, parameters):
    """The reason, in a list, when cls.method's parameter names after self are not `parameters`."""
    function = getattr(cls, method, None)
    found = tuple(inspect.signature(function).parameters)[1:] if callable(function) else None
    if found == tuple(parameters):
        return []
    return [f"{cls.__name__}.{method} takes {found}, not the {tuple(parameters)} the fused path "
            "was written for"]


def wrapped_reason(function, module, name):
    """The reason, in a list, when `function` is not `module`'s own `name` (wrapped or replaced)."""
    if (getattr(function, "__module__", None) == module and
            getattr(function, "__qualname__", None) == name and
            not hasattr(function, "__wrapped__")):
        return []
    return [f"{module}.{name} is not the library's own function (wrapped or replaced: "
            f"{function!r}), and the fused path does not call it"]


def sample_tensor(*shape, like):
    """A fixed random tensor on `like`'s device and dtype, from its own generator: a check never
    moves the global RNG a user seeded."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    return x.to(like.device, like.dtype)


def first_parameter(module):
    return next(module.parameters())
