"""Shared test tools: the device and the checkout, the tolerance table, random model biases,
fused-vs-eager and patched-vs-unpatched comparisons, kernel launches.

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
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import swin_fused
from swin_fused import patching
from swin_fused.verification import TOLERANCES, error_bound, joined, relative_error
from tests.conftest import DEVICE

ON_GPU = DEVICE == "cuda"
ROOT = Path(__file__).resolve().parents[1]  # the checkout
# the q, k and v biases of every family: a joined qkv Linear, timm V2's q_bias and v_bias, and
# Hugging Face's three Linears (q_proj or query, ...)
QKV_BIASES = ("qkv.bias", "q_bias", "v_bias", "q_proj.bias", "k_proj.bias", "v_proj.bias",
              "query.bias", "key.bias", "value.bias")


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


def randomized(model, seed=0, table_scale=1.0, dtype=torch.float32, norm_scale=None):
    """`model` on DEVICE in `dtype` with random non-zero biases, so that padded keys and the
    position bias matter: relative position bias tables ~ N(0, table_scale), qkv biases
    ~ N(0, 0.5), V2's logit scales from exp(0) to past the clamp at log(100) = 4.6, and, where
    norm_scale is given, norm weights ~ N(1, norm_scale) (timm V2 starts its post-norms at zero,
    which would hide the attention branch)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name:
                p.normal_(0.0, table_scale)
            elif name.endswith(QKV_BIASES):
                p.normal_(0.0, 0.5)
            elif "logit_scale" in name:
                p.copy_(torch.linspace(0.0, 5.0, p.numel()).view_as(p))
            elif norm_scale is not None and "norm" in name and name.endswith("weight"):
                p.normal_(1.0, norm_scale)
    return model.to(DEVICE, dtype)


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
    for name, g, e, ref in zip(grad_names(params), got, same_dtype, expected, strict=True):
        assert g.dtype == e.dtype, f"{label} {name}: {g.dtype} != eager's {e.dtype}"
        assert_as_accurate_as_eager(g, e, ref, qkv.dtype, f"{label} {name}")
    return got


def output_and_grads(model, x):
    """{"output": the joined output of `model` for x, "grad of <name>": every parameter's
    gradient}, for the loss sum(out * g), g a fixed random tensor of the output's shape."""
    model.zero_grad(set_to_none=True)
    out = joined(model(x))
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(out.numel()))
    (out * g.to(out)).sum().backward()
    return {"output": out.detach(), **parameter_grads(model)}


def parameter_grads(model):
    """{"grad of <name>": gradient} of every parameter of `model` that has one."""
    return {f"grad of {n}": p.grad for n, p in model.named_parameters() if p.grad is not None}


def assert_matches_unpatched(got, reference, run, *inputs):
    """`got`, what run(patched model, *inputs) gave ({name: tensor}), is as accurate as what the
    unpatched fp32 model `reference` gives: both against a float64 copy of `reference`."""
    eager = run(copy.deepcopy(reference), *inputs)
    exact = run(copy.deepcopy(reference).double(), *(t.double() for t in inputs))
    assert got.keys() == exact.keys()
    for name, expected in exact.items():
        assert_as_accurate_as_eager(got[name], eager[name], expected, torch.float32, name)


def assert_patched_matches_unpatched(reference, *inputs, run=output_and_grads):
    """A patched copy of the fp32 model `reference` matches it (assert_matches_unpatched), the
    Triton kernels run forward and backward. Returns (patched model, kernel launches)."""
    model = swin_fused.patch(copy.deepcopy(reference))
    with kernel_launches() as launches:
        got = run(model, *inputs)
    assert launches.get("fwd", 0) > 0 and launches.get("bwd", 0) > 0, \
        f"the Triton kernels did not run: {launches}"
    assert_matches_unpatched(got, reference, run, *inputs)
    return model, launches


def assert_fx_feature_extractor_fused_either_way(reference, x, nodes, n_layers):
    """torchvision's FX feature extractor of the fp32 model `reference` at `nodes`, traced after
    patching and patched after tracing: each fuses its `n_layers` layers (patching again changes
    nothing), matches the unpatched extractor, and unpatches."""
    from torchvision.models.feature_extraction import create_feature_extractor
    eager = create_feature_extractor(reference, nodes)(x)
    exact = create_feature_extractor(copy.deepcopy(reference).double(), nodes)(x.double())
    models = {
        # the fused functional is an FX leaf, as torchvision's is
        "traced after patching": create_feature_extractor(
            swin_fused.patch(copy.deepcopy(reference)), nodes),
        # patching a traced model swaps the calls of torchvision's functional in its graph
        "patched after tracing": swin_fused.patch(create_feature_extractor(
            copy.deepcopy(reference), nodes)),
    }
    for label, model in models.items():
        assert patching.patched_count(model) == n_layers, label
        assert patching.patched_count(swin_fused.patch(model)) == n_layers, label
        with kernel_launches() as launches:
            got = model(x)
        assert launches == {"fwd": n_layers}, label
        for node in nodes:
            assert_as_accurate_as_eager(got[node], eager[node], exact[node], torch.float32,
                                        f"{label}: {node}")
        swin_fused.unpatch(model)
        assert patching.patched_count(model) == 0, label
        with kernel_launches() as launches:
            model(x)
        assert not launches, label


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
    def ops(model):
        with torch.no_grad(), OpsInside(targets(model)) as mode:
            model(x)
        return mode.seen
    assert "aten.roll" in ops(model), "the recorder saw no roll in the unpatched model"
    fused_ops = ops(swin_fused.patch(model))
    assert "swin_fused.window_attention_fwd" in fused_ops
    shuffles = sorted(fused_ops & EAGER_SHUFFLES)
    assert not shuffles, f"patched forward ran {shuffles}"
