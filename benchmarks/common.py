"""What every benchmark shares: the model factory, the input factories, the op shapes and byte
count, the agreement check, the record of a case that could not run, and the timing helper.

Speed is measured on a GPU only. On a CPU the fused kernels would run in Triton's interpreter, so
only plain-PyTorch baselines run there, labelled as such.
Environment: QUICK=1 fewer rounds and cases; BENCH_COMPILE=0 no torch.compile or FlexAttention
cases; SWIN_FUSED_KERNEL the fused op's default kernel generation.
"""
import contextlib
import functools
import math
import os
import time
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
QUICK = os.environ.get("QUICK", "0") not in ("", "0")
COMPILE = os.environ.get("BENCH_COMPILE", "1") not in ("", "0")
NO_GPU = ("needs a CUDA GPU: speed is measured on a GPU only (on a CPU the fused kernels would "
          "run in Triton's interpreter, whose timings say nothing about the kernels)")
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

# bf16 agreement with eager as ||impl - eager|| / ||eager||; gradients see more bf16 roundings
OUTPUT_TOL = 2e-2
GRAD_TOL = 5e-2


def compiles(impl):
    """Whether the impl runs torch.compile (FlexAttention runs fused only compiled)."""
    return "compiled" in impl or impl == "flex"


def skip_reason(impl, model_tag=None):
    """Why a GPU case cannot run here, or None."""
    if not ON_GPU:
        return NO_GPU
    if INTERPRETED and "fused" in impl:
        return "TRITON_INTERPRET=1: interpreter timings are not kernel performance"
    if compiles(impl) and not COMPILE:
        return "BENCH_COMPILE=0"
    if compiles(impl) and model_tag == "cifar" and QUICK:
        return "QUICK=1 skips the compiled CIFAR cases"
    return None


def case(case_id, group, impl, *values, reason=None):
    """One GPU case: its id, marked with group and impl so a skip is recorded in the results."""
    marks = [pytest.mark.bench_case(group=group, impl=impl)]
    if reason:
        marks.append(pytest.mark.skip(reason=reason))
    return pytest.param(*values, id=case_id, marks=marks)


@contextlib.contextmanager
def recorded_as_skip(impl):
    """An impl that raises or disagrees with eager posts no number: its case is skipped, and the
    reason (the exception's message, cut at 400 characters) is recorded by conftest.py."""
    try:
        yield
    except Exception as e:  # any failure of a peer or of ours is a finding, never a timing
        message = " ".join(str(e).split()) or "(no message)"
        pytest.skip(f"{impl} failed: {type(e).__name__}: {message[:400]}")


def fused_kernel(shape):
    """The kernel generation the fused op runs by default at this op shape (ops.resolve_kernel)."""
    from swin_fused.eager import windows_per_axis
    from swin_fused.ops import resolve_kernel
    window = shape.window if shape.T else (shape.window, shape.window)
    windows = math.prod(windows_per_axis(shape.size, window))
    return resolve_kernel(None, shape.batch * windows, is_3d=bool(shape.T))


# ---- models ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSpec:
    tag: str          # the group's size label: "cifar" (32x32), "224", "video", "3d"
    input: tuple      # one sample: (channels, *spatial)
    classes: int
    rounds: int       # timed rounds of one step each
    sdpa: bool = False  # has an SDPA attention path of its own (timm's fused_attn, MONAI's)
    batch: int = 128  # the GPU cases' batch
    dense: bool = False  # segmentation: a label per voxel, not per sample
    compiled: bool = True  # has compiled impls (compiling SwinUNETR is left out: minutes)
    benchmarked: bool = True  # has benchmark cases; False: a model for the CPU tests only


MODELS = {
    "swin_cifar": ModelSpec("cifar", (3, 32, 32), 10, rounds=10),
    "swin_t": ModelSpec("224", (3, 224, 224), 1000, rounds=5),
    "tv_swin_t": ModelSpec("224", (3, 224, 224), 1000, rounds=5),
    "timm_swin_t": ModelSpec("224", (3, 224, 224), 1000, rounds=5, sdpa=True),
    # torchvision's Video Swin-T on 16x224x224 clips (8x56x56 tokens, windows 8x7x7): batch 8, as
    # its Kinetics recipe has per GPU
    "swin3d_t": ModelSpec("video", (3, 16, 224, 224), 400, rounds=5, batch=8),
    # MONAI's SwinUNETR (feature size 48, the BTCV config) on its usual 96^3 patches, 14 classes
    "swin_unetr": ModelSpec("3d", (1, 96, 96, 96), 14, rounds=5, sdpa=True, batch=2, dense=True,
                            compiled=False),
    # Hugging Face's Swin-T (SwinForImageClassification, no weights), whose sdpa is its own
    # attn_implementation="sdpa"
    "hf_swin_t": ModelSpec("224", (3, 224, 224), 1000, rounds=5, sdpa=True),
    # a two-stage reference Swin small enough for Triton's interpreter: profile_step's CPU test
    "tiny_swin": ModelSpec("tiny", (3, 32, 32), 10, rounds=1, batch=2, benchmarked=False),
}


def _without_stochastic_depth(model):
    """No stochastic depth in a torchvision model, so the agreement check's training passes drop
    the same paths: none."""
    import torchvision
    for m in model.modules():
        if isinstance(m, torchvision.ops.StochasticDepth):
            m.p = 0.0
    return model


class Logits(torch.nn.Module):
    """A Hugging Face classifier whose forward returns the logits, as the other models' does."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, images):
        return self.classifier(pixel_values=images).logits


def _hf_swin_t():
    """Swin-T 224 in Hugging Face transformers, eager attention, no stochastic depth."""
    transformers = pytest.importorskip("transformers", reason="hf_swin_t needs transformers")
    config = transformers.SwinConfig(image_size=224, embed_dim=96, depths=[2, 2, 6, 2],
                                     num_heads=[3, 6, 12, 24], window_size=7, num_labels=1000,
                                     drop_path_rate=0.0, attn_implementation="eager")
    return Logits(transformers.SwinForImageClassification(config))


def _build(name):
    from swin_fused import reference
    if name == "swin_cifar":
        return reference.swin_cifar(patch_size=2, n_classes=10, mlp_ratio=1)
    if name == "tiny_swin":
        # 8x8 tokens in 4x4 windows, then one shifted 4x4 window: a few interpreter programs
        return reference.SwinTransformer(patch_size=4, n_classes=10, embed_dim=32, depths=(2, 2),
                                         n_heads=(2, 4), window_size=4, mlp_ratio=1)
    if name == "swin_t":
        return reference.swin_t()
    if name == "tv_swin_t":
        import torchvision
        return _without_stochastic_depth(torchvision.models.swin_t())
    if name == "timm_swin_t":
        timm = pytest.importorskip("timm", reason="timm_swin_t needs timm (the test extra)")
        return timm.create_model("swin_tiny_patch4_window7_224", drop_path_rate=0.0)
    if name == "swin3d_t":
        import torchvision
        return _without_stochastic_depth(torchvision.models.video.swin3d_t())
    if name == "swin_unetr":
        pytest.importorskip("monai", reason="swin_unetr needs MONAI (pip install monai einops), "
                                            "which the GPU machine may lack: it has no network")
        pytest.importorskip("einops", reason="MONAI's SwinUNETR needs einops (pip install einops)")
        from monai.networks.nets import SwinUNETR
        return SwinUNETR(in_channels=1, out_channels=14, feature_size=48)
    if name == "hf_swin_t":
        return _hf_swin_t()
    raise ValueError(f"unknown model {name}")


def make_model(name, impl, mode, device=DEVICE, compile_mode=None):
    """The one model factory: the same weights for every impl (fixed seed), on `device`, in the
    mode's train/eval state. sdpa: the model's own SDPA path on in every block (timm's fused_attn,
    MONAI's use_flash_attention, Hugging Face's attn_implementation); fused: swin_fused.patch'ed;
    compiled: torch.compile'd (after the rest), with `compile_mode`."""
    torch.manual_seed(0)
    model = _build(name).to(device).train(mode == "train")
    if MODELS[name].sdpa:
        from benchmarks.peers import set_sdpa
        # explicitly off for every other impl: TIMM_FUSED_ATTN in the environment must not leak in
        if set_sdpa(model, "sdpa" in impl) == 0 and "sdpa" in impl:
            raise ValueError(f"{name} has no attention module whose SDPA path could be switched")
    elif "sdpa" in impl:
        raise ValueError(f"{name} has no SDPA attention path of its own")
    if "fused" in impl:
        import swin_fused
        from swin_fused.patching import patched_count
        swin_fused.patch(model)
        if patched_count(model) == 0:
            raise ValueError(f"swin_fused.patch fused no block of {name}")
    if "compiled" in impl:
        model = torch.compile(model, mode=compile_mode)
    return model


def make_batch(name, batch, device=DEVICE):
    """The one input factory: random images (clips, volumes) and labels (per sample, or per voxel
    for segmentation) for model `name`."""
    spec = MODELS[name]
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(batch, *spec.input, generator=gen)
    labels = torch.randint(0, spec.classes, (batch, *spec.input[1:]) if spec.dense else (batch,),
                           generator=gen)
    return images.to(device), labels.to(device)


def autocast(device):
    # bf16 autocast on the GPU; the CPU baselines run in fp32
    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda")


def check_pass(model, mode, images, labels):
    """One pass for the agreement check: fp32 logits, and in training every parameter's gradient."""
    device = images.device.type
    if mode == "infer":
        with torch.no_grad(), autocast(device):
            return model(images).float(), None
    with autocast(device):
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
    loss.backward()
    grads = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten().float()
                       for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    return logits.detach().float(), grads


def make_step(model, mode, images, labels, capturable=False):
    """The timed unit: an inference forward, or a training step (forward, backward, AdamW step);
    `capturable`: an AdamW that a CUDA graph can capture (its step count on the GPU)."""
    device = images.device.type
    if mode == "infer":
        def step():
            with torch.no_grad(), autocast(device):
                model(images)
        return step
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, capturable=capturable)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
    return step


def cuda_graphed(fn, warmup=3):
    """`fn` captured in one torch.cuda.CUDAGraph: a callable that replays it and returns what the
    captured call returned (tensors the next replay overwrites). Warm-up calls run first on a side
    stream, as capture requires (lazy state such as AdamW's is made there, not in the graph)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = fn()

    def replay():
        graph.replay()
        return captured
    return replay


@functools.lru_cache(maxsize=4)
def eager_reference(name, mode, batch, device=DEVICE):
    """The eager model's check pass, kept on the CPU so it never counts in a case's peak memory."""
    model = make_model(name, "eager", mode, device)
    logits, grads = check_pass(model, mode, *make_batch(name, batch, device))
    result = logits.cpu(), None if grads is None else grads.cpu()
    del model, logits, grads
    free_memory()
    return result


# ---- the op ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OpShape:
    batch: int
    H: int
    W: int
    dim: int
    heads: int
    window: int = 7   # square; (t, h, w) for a 3-D map
    shift: int = 3    # the same for every axis; (t, h, w) for a 3-D map
    T: int = 0        # frames (depth) of a 3-D map; 0 for a 2-D one
    cosine: bool = False  # Swin V2's cosine attention: a per-head logit_scale instead of scale

    @property
    def size(self):
        return (self.T, self.H, self.W) if self.T else (self.H, self.W)

    @property
    def tokens(self):
        return math.prod(self.size)

    @property
    def window_tokens(self):
        return math.prod(self.window) if self.T else self.window ** 2

    @property
    def label(self):
        def axes(v):
            return "x".join(map(str, v)) if isinstance(v, tuple) else str(v)
        return (f"B{self.batch} {axes(self.size)} C{self.dim} h{self.heads} "
                f"w{axes(self.window)} s{axes(self.shift)}" + (" cos" if self.cosine else ""))


STAGE1 = OpShape(128, 56, 56, 96, 3)
SWIN_T_STAGES = (STAGE1, OpShape(128, 28, 28, 192, 6), OpShape(128, 14, 14, 384, 12),
                 OpShape(128, 7, 7, 768, 24))
CIFAR_STAGES = (OpShape(128, 16, 16, 192, 3), OpShape(128, 8, 8, 384, 6),
                OpShape(128, 4, 4, 768, 12))
# stage 1 of torchvision's swin3d_t on 16x224x224 clips at batch 8: window 8x7x7 (392 tokens);
# the time axis (8 after patch 2) fits in one window, so torchvision drops its shift
SWIN3D_T_STAGE1 = OpShape(8, 56, 56, 96, 3, window=(8, 7, 7), shift=(0, 3, 3), T=8)
# stage 1 of MONAI's SwinUNETR (feature size 48) on 96^3 patches at batch 2: 7x7x7 (343 tokens)
SWIN_UNETR_STAGE1 = OpShape(2, 48, 48, 48, 3, window=(7, 7, 7), shift=(3, 3, 3), T=48)
# windows over 64 tokens (v2's tiled kernels): stage 1 of Swin-B at 384 (timm
# swin_base_patch4_window12_384), window 12 (144 tokens); batch 128, as eager's bf16 fwd+bwd peaks
# near 10 GiB there (inputs and about 3.6 fp32 8192x4x144x144 score tensors of 2.7 GB each)
SWIN_B_384_STAGE1 = OpShape(128, 96, 96, 128, 4, window=12, shift=6)
# stage 1 of Swin V2-T at 256 with window 16 (timm swinv2_tiny_window16_256; 256 tokens), cosine
# attention; batch 128, as eager's bf16 fwd+bwd peaks near 7 GiB there
SWINV2_T_W16_STAGE1 = OpShape(128, 64, 64, 96, 3, window=16, shift=8, cosine=True)
# every stage of each model, as the op sees it in a shifted block: group op-*-<model>-stage<k>
OP_STAGES = {"swin_t": SWIN_T_STAGES, "swin_cifar": CIFAR_STAGES,
             "swin_b_384": (SWIN_B_384_STAGE1,), "swinv2_t_w16": (SWINV2_T_W16_STAGE1,),
             "swin3d_t": (SWIN3D_T_STAGE1,), "swin_unetr": (SWIN_UNETR_STAGE1,)}


# the op inputs whose gradients a backward computes (logit_scale: cosine shapes only)
GRAD_INPUTS = ("qkv", "rel_bias", "logit_scale")


def op_inputs(shape, dtype, device=DEVICE, requires_grad=False, seed=0):
    """The one op input factory: qkv (B, tokens, 3C) in `dtype`, fp32 rel_bias (heads, N, N) and
    qkv_bias (3C,) as a model under autocast passes them, for a cosine shape an fp32 logit_scale
    (heads,), and an output gradient. `requires_grad`: on qkv, rel_bias and logit_scale."""
    torch.manual_seed(seed)
    n = shape.window_tokens
    qkv = torch.randn(shape.batch, shape.tokens, 3 * shape.dim, device=device, dtype=dtype)
    rel_bias = torch.randn(shape.heads, n, n, device=device)
    qkv_bias = torch.randn(3 * shape.dim, device=device)
    dout = torch.randn(shape.batch, shape.tokens, shape.dim, device=device, dtype=dtype)
    inputs = dict(qkv=qkv, rel_bias=rel_bias, qkv_bias=qkv_bias)
    if shape.cosine:
        # what timm's and torchvision's V2 pass at initialisation: exp(min(log 10, log 100))
        parameter = torch.full((shape.heads,), math.log(10), device=device)
        inputs["logit_scale"] = parameter.clamp(max=math.log(100)).exp()
    for name in GRAD_INPUTS:
        if name in inputs:
            inputs[name].requires_grad_(requires_grad)
    return inputs, dout


def call_op(fn, shape, inputs):
    """Any window-attention implementation with the signature of swin_fused.window_attention, or
    of window_attention_3d for a 3-D shape."""
    return fn(inputs["qkv"], *shape.size, shape.heads, shape.window, shape.shift,
              rel_bias=inputs["rel_bias"], qkv_bias=inputs["qkv_bias"],
              scale=(shape.dim // shape.heads) ** -0.5, logit_scale=inputs.get("logit_scale"))


def op_bytes(shape, itemsize, forward=True, backward=False):
    """The fewest bytes the op must move: forward reads qkv and writes out; backward reads qkv,
    out and dout and writes dqkv. The same count for every implementation."""
    qkv = shape.batch * shape.tokens * 3 * shape.dim * itemsize
    out = qkv // 3
    return (qkv + out if forward else 0) + (2 * qkv + 2 * out if backward else 0)


@functools.lru_cache(maxsize=1)
def copy_gb_per_sec():
    """Device-to-device copy bandwidth of this GPU, measured now: (bytes read + written) / time."""
    import triton.testing
    src = torch.rand(2 ** 28, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


# ---- checking and timing -----------------------------------------------------------------------

def rel_error(actual, expected):
    """||actual - expected|| / ||expected|| in float64; NaN or inf anywhere gives NaN."""
    actual, expected = actual.detach().double(), expected.detach().double().to(actual.device)
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()


def check_close(actual, expected, tol, what):
    # not verification.error_bound, which needs a float64 run per case: held to bf16 eager instead
    err = rel_error(actual, expected)
    assert err <= tol, (f"{what}: relative error {err:.2e} against eager exceeds {tol:.0e}; "
                        "a case that disagrees with eager posts no timing")
    return err


def synchronize():
    if ON_GPU:
        torch.cuda.synchronize()


def free_memory():
    import gc
    gc.collect()
    if ON_GPU:
        torch.cuda.empty_cache()


def fused_launches():
    """Launches of the fused Triton kernels so far: a case asserts that its kernels really ran."""
    from swin_fused.kernels.common import LAUNCHES
    return sum(LAUNCHES.values())


def triton_kernels():
    """Both kernel generations' Triton functions and the ones they share (the kernels the launchers
    run and the jit helpers they call), each once; a function's name is `fn.fn.__name__`."""
    from triton.runtime.jit import KernelInterface

    from swin_fused.kernels import common, v1, v2
    found = {id(fn): fn for module in (common, v1, v2) for fn in vars(module).values()
             if isinstance(fn, KernelInterface)}
    return list(found.values())


def first_call_s(fn):
    """Wall time of a first call, compilation included, and its result."""
    synchronize()
    start = time.perf_counter()
    result = fn()
    synchronize()
    return time.perf_counter() - start, result


def peak_memory_mib(step):
    """Peak allocated GPU memory over one call of `step` (None on a CPU)."""
    if not ON_GPU:
        return None
    synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    synchronize()
    return torch.cuda.max_memory_allocated() / 2 ** 20


def measure(benchmark, step, group, warmup, rounds, calls=1, **info):
    """Time `step` with pytest-benchmark: fixed rounds of `calls` back-to-back calls, the GPU
    synchronised at the end of each round. Warm-up and one peak-memory pass run first, untimed.
    Records group, peak_mem_mib and `info` in the result; returns seconds per call (None when
    benchmarking is disabled)."""
    def one_round():
        for _ in range(calls):
            step()
        synchronize()

    for _ in range(warmup):
        step()
    peak = peak_memory_mib(step)
    benchmark.group = group
    benchmark.extra_info.update(info, peak_mem_mib=peak, rounds=rounds, calls_per_round=calls,
                                device=torch.cuda.get_device_name() if ON_GPU else "cpu")
    benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=0)
    if benchmark.stats is None:
        return None
    return benchmark.stats.stats.median / calls
