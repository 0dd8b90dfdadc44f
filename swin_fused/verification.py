"""The check `patch` makes before it fuses a layer: the layer's own code and the fused code on one
small input agree within the tolerance the test suite holds the op to.

A rule can only refuse what it foresees (an override, a missing attribute, a changed signature);
this check catches the rest: upstream code that computes something else, a wrapped function. It
runs once per distinct layer configuration (class, the layer's scalar attributes, parameter
shapes, dtype, device, kernel generation) in a process: the fused method, the unfused method and
the unfused method on a float64 copy, all on the family's `sample` input, in eval mode (dropout
off) under no_grad. Both results are measured against the float64 one, and the fused error may be
at most TOLERANCES' multiple of the eager error plus its floor.
"""
import contextlib
import copy
import math
import os
from typing import NamedTuple

import torch


class Tolerance(NamedTuple):
    ratio: float  # times the eager error
    floor: float  # relative to the reference's largest magnitude


# per compute dtype; errors are max |x - reference| / max |reference|
TOLERANCES = {
    # fp32: a gradient that is one long cancelling sum (a V2 model's logit scale) is off by up to
    # 7e-5 in fused and eager alike, on any CPU, so eager's error is no bound alone; TF32 is ~5e-4
    torch.float32: Tolerance(ratio=2.0, floor=1e-4),
    torch.float16: Tolerance(ratio=2.0, floor=2e-3),
    torch.bfloat16: Tolerance(ratio=2.0, floor=1e-2),
    torch.float64: Tolerance(ratio=2.0, floor=1e-10),
}


def relative_error(actual, reference):
    """max |actual - reference| / max |reference|, in float64."""
    actual, reference = actual.detach().double().cpu(), reference.detach().double().cpu()
    return ((actual - reference).abs().max() / reference.abs().max().clamp_min(1e-30)).item()


def error_bound(eager, reference, dtype):
    """The largest error against `reference` a fused result in `dtype` may have, given eager's
    result in the same dtype (None or non-finite: the floor alone)."""
    tol = TOLERANCES[dtype]
    eager_err = relative_error(eager, reference) if eager is not None else math.nan
    return tol.ratio * eager_err + tol.floor if math.isfinite(eager_err) else tol.floor


def joined(out):
    """A method's result as one flat tensor: the tensors in it (a tuple, list or dict, as a Hugging
    Face layer returns) flattened and joined; anything else (None, sizes) left out."""
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        parts = [joined(t) for t in out]
        parts = [t.flatten() for t in parts if t is not None]
        return torch.cat(parts) if parts else None
    return out if isinstance(out, torch.Tensor) else None


def _as_float64(args):
    return tuple(a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                 for a in args)


def _settled(value):
    """A hashable form of an attribute's value, or None for what is no configuration."""
    if isinstance(value, (bool, int, float, str, type(None))):
        return value
    if isinstance(value, (tuple, list)) and all(isinstance(v, (bool, int, float)) for v in value):
        return tuple(value)
    return None


def configuration(module):
    """What makes two layers of one class compute alike for the check: their scalar attributes,
    their parameters' shapes, dtype and device, and the kernel generation asked for."""
    attributes = tuple(sorted((k, _settled(v)) for k, v in vars(module).items()
                              if k != "training" and _settled(v) is not None))
    parameters = tuple((n, tuple(p.shape), p.dtype, str(p.device))
                       for n, p in module.named_parameters())
    return (type(module), attributes, parameters, os.environ.get("SWIN_FUSED_KERNEL", ""))


@contextlib.contextmanager
def _evaluating(module):
    """The module in eval mode (dropout and drop-path off) for the block, then as it was."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


_verified = {}


def disagreement(family, module):
    """Why the fused METHOD of `module` (already of its fused class) does not compute what its own
    METHOD does on the family's sample input, or None; remembered per configuration."""
    if any(p.is_meta for p in module.parameters()):
        return None  # no values to compute with yet (a model built on the meta device)
    key = configuration(module)
    if key not in _verified:
        _verified[key] = _compare(family, module)
    return _verified[key]


def _compare(family, module):
    from swin_fused import ops
    fused_method = getattr(type(module), family.METHOD)
    own_method = getattr(module.unfused_class, family.METHOD)
    compared = getattr(family, "compared", lambda out: out)  # what both return alike
    with family.sample(module) as args, _evaluating(module), torch.no_grad(), \
            ops.fallbacks_quiet():
        exact_module = copy.deepcopy(module).double()  # after sample: it may set attributes
        fused = joined(compared(fused_method(module, *args)))
        own = joined(compared(own_method(module, *args)))
        exact = joined(compared(own_method(exact_module, *_as_float64(args))))
    name = module.unfused_class.__name__
    dtype = own.dtype
    if dtype not in TOLERANCES:
        return None  # the op runs eager PyTorch for this dtype: there is nothing fused to check
    if fused.shape != exact.shape or not torch.isfinite(fused).all():
        return (f"{name}'s fused {family.METHOD} gave {tuple(fused.shape)} "
                f"values{'' if torch.isfinite(fused).all() else ' with non-finite ones'} where "
                f"its own gave {tuple(exact.shape)}")
    error, bound = relative_error(fused, exact), error_bound(own, exact, dtype)
    if error <= bound:
        return None
    return (f"{name}'s fused {family.METHOD} differs from its own by "
            f"{error:.2e} of the output's scale on a check input (allowed {bound:.1e}): its code "
            "is not what the adapter reproduces")
