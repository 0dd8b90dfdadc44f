"""Shared test tools: the device, the tolerance table, fused-vs-eager comparison, kernel launches.

Tolerances hold on any machine: PyTorch's CPU kernels round differently per vector width
(ATEN_CPU_CAPABILITY=default/avx2/avx512) and thread count, and the interpreter's tl.dot runs in
NumPy's BLAS, which picks its kernels by CPU too (OPENBLAS_CORETYPE), so a fused result is never
held to a fixed bound against eager's. Both are measured against a float64 reference, and the
fused error may be at most a multiple of eager's own error in the same dtype, plus a small floor.
An error is relative to the reference's largest magnitude, so a gradient that cancels to a tiny
fraction of its terms (timm V2's logit_scale at batch 1) measures neither: test where none does.
"""
import contextlib
import copy

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from swin_fused.verification import TOLERANCES, error_bound, joined, relative_error
from tests.conftest import DEVICE

ON_GPU = DEVICE == "cuda"


def assert_close(actual, expected, rtol, name="tensor"):
    """Max-abs error within rtol of the expected tensor's scale, for results that must agree to a
    stated tolerance (a distributed run and one process); fused against eager is
    assert_as_accurate_as_eager."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    err = (actual - expected).abs()
    scale = expected.abs().max().clamp_min(1e-6)
    assert err.max() <= rtol * scale, (
        f"{name}: max error {err.max():.3e} > {rtol:.1e} * scale {scale:.3e}; "
        f"{_worst(actual, expected)}")


def _worst(actual, reference):
    err = (actual.detach().double().cpu() - reference.detach().double().cpu()).abs()
    idx = tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))
    return f"worst at {idx}: got {float(actual[idx]):.6e}, expected {float(reference[idx]):.6e}"


def assert_as_accurate_as_eager(fused, eager, reference, dtype, name="tensor"):
    """The fused result's error against the float64 `reference` is within TOLERANCES[dtype] of
    the error of `eager`, the same computation by unfused PyTorch in `dtype`. Where eager is None
    (nothing to compare with) or not finite (it can overflow in fp16 where the fused op does not),
    the floor alone bounds it."""
    assert fused.shape == reference.shape, f"{name}: shape {fused.shape} != {reference.shape}"
    assert torch.isfinite(fused).all(), f"{name}: non-finite values"
    if reference.numel() == 0:
        return
    err, bound = relative_error(fused, reference), error_bound(eager, reference, dtype)
    assert err <= bound, (
        f"{name} ({dtype}): error {err:.3e} > {bound:.3e}, {TOLERANCES[dtype].ratio} x eager's "
        f"error + {TOLERANCES[dtype].floor:.0e}; {_worst(fused, reference)}")


def randomized(model):
    """Non-zero qkv biases and bias tables, so padded keys and the position bias matter."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("qkv.bias") or name.endswith("relative_position_bias_table"):
                p.normal_(0, 0.5)
    return model.to(DEVICE)


def outputs(model, x):
    """The output and the gradient of every parameter, for the loss out.square().sum()."""
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.square().sum().backward()
    return [out] + [p.grad for p in model.parameters()]


@contextlib.contextmanager
def kernel_launches():
    """Counts launches of the fused Triton kernels inside the block: `with kernel_launches() as n`
    gives e.g. {"fwd": 2}; a kernel that did not run has no entry."""
    from swin_fused.kernels.common import LAUNCHES
    before = dict(LAUNCHES)
    counts = {}
    yield counts
    counts.update({k: n - before.get(k, 0) for k, n in LAUNCHES.items()
                   if n > before.get(k, 0)})


def op_grads(fn, qkv, params, config, dout):
    """fn(qkv, **config, **params): its output, then the gradients of qkv and of each parameter
    that is not None, for the output gradient dout."""
    leaves = [t.detach().requires_grad_() for t in [qkv, *params.values()] if t is not None]
    rest = iter(leaves[1:])
    kwargs = {k: (next(rest) if v is not None else None) for k, v in params.items()}
    out = fn(leaves[0], **config, **kwargs)
    return [out] + list(torch.autograd.grad(out, leaves, dout.to(out.dtype)))


def as_float64(params):
    return {k: (v.double() if v is not None else None) for k, v in params.items()}


def grad_names(params):
    """The names of what op_grads returns."""
    return ["out", "dqkv"] + [f"d{k}" for k, v in params.items() if v is not None]


def assert_fused_as_accurate_as_eager(fused, eager, qkv, params, config, dout, label):
    """The fused op (one forward and one backward launch) and eager in qkv's dtype, against eager
    in float64: the output and every gradient. Returns the fused op's."""
    with kernel_launches() as launches:
        got = op_grads(fused, qkv, params, config, dout)
    assert launches == {"fwd": 1, "bwd": 1}
    same_dtype = op_grads(eager, qkv, params, config, dout)
    expected = op_grads(eager, qkv.double(), as_float64(params), config, dout.double())
    for name, g, e, ref in zip(grad_names(params), got, same_dtype, expected):
        assert g.dtype == e.dtype, f"{label} {name}: {g.dtype} != eager's {e.dtype}"
        assert_as_accurate_as_eager(g, e, ref, qkv.dtype, f"{label} {name}")
    return got


def output_and_grads(model, x):
    """The joined output of `model` for x and the gradient of every parameter, {name: grad}, for
    the loss sum(out * g), g a fixed random tensor of the output's shape."""
    model.zero_grad(set_to_none=True)
    out = joined(model(x))
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(out.numel()))
    (out * g.to(out)).sum().backward()
    return out.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def _grouped(grads, group):
    """{name: grad} with the gradients whose group(name) is the same joined into one flat tensor."""
    joined = {}
    for name, grad in grads.items():
        joined.setdefault(group(name), []).append(grad.flatten())
    return {key: torch.cat(parts) for key, parts in joined.items()}


def assert_patched_matches_unpatched(reference, x, group=None):
    """A patched copy of the fp32 model `reference` against it, both against a float64 copy: the
    output and every parameter gradient, with the Triton kernels run. `group(name)`, where given,
    joins gradients measured as one (a key bias's gradient is zero but for rounding, as softmax
    ignores a shift shared by a row: measured with the query and value biases', as a joined qkv
    bias is). Returns (patched model, kernel launches)."""
    import swin_fused
    model = swin_fused.patch(copy.deepcopy(reference))
    with kernel_launches() as launches:
        out, grads = output_and_grads(model, x)
    assert launches.get("fwd", 0) > 0 and launches.get("bwd", 0) > 0, \
        f"the Triton kernels did not run: {launches}"
    eager, eager_grads = output_and_grads(reference, x)
    exact, exact_grads = output_and_grads(copy.deepcopy(reference).double(), x.double())
    if group is not None:
        grads, eager_grads, exact_grads = (_grouped(g, group)
                                           for g in (grads, eager_grads, exact_grads))
    assert_as_accurate_as_eager(out, eager, exact, torch.float32, "output")
    assert grads.keys() == exact_grads.keys()
    for name, grad in exact_grads.items():
        assert_as_accurate_as_eager(grads[name], eager_grads[name], grad, torch.float32,
                                    f"grad of {name}")
    return model, launches


# eager shuffles a fused attention path must not run
EAGER_SHUFFLES = {"aten.roll", "aten.softmax", "aten._softmax", "aten.constant_pad_nd", "aten.bmm"}


class OpsInside(TorchDispatchMode):
    """Records the aten ops run while inside one of `modules`' forward calls."""

    def __init__(self, modules):
        super().__init__()
        self.seen, self.depth = set(), 0
        self.handles = []
        for m in modules:
            self.handles.append(m.register_forward_pre_hook(lambda *_: self._enter(1)))
            self.handles.append(m.register_forward_hook(lambda *_: self._enter(-1)))

    def _enter(self, step):
        self.depth += step

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.depth:
            self.seen.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        return super().__exit__(*exc)


def assert_patched_runs_no_eager_shuffles(model, targets, x):
    """Inside the modules `targets(model)` (the fused classes' instances), the unpatched forward of
    x runs a roll (the recorder works) and the patched one the fused op and no eager shuffle."""
    import swin_fused

    def ops(model):
        with torch.no_grad(), OpsInside(targets(model)) as mode:
            model(x)
        return mode.seen
    assert "aten.roll" in ops(model), "the recorder saw no roll in the unpatched model"
    fused_ops = ops(swin_fused.patch(model))
    assert "swin_fused.window_attention_fwd" in fused_ops
    shuffles = sorted(fused_ops & EAGER_SHUFFLES)
    assert not shuffles, f"patched forward ran {shuffles}"
