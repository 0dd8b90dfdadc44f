"""Whole-model throughput, latency and peak memory under bf16 autocast.

Models: the seed's swin_cifar at 32x32, the reference swin_t, torchvision's swin_t, timm's
swin_tiny_patch4_window7_224 and Hugging Face's Swin-T (SwinForImageClassification, embed 96,
depths 2-2-6-2, heads 3-6-12-24, window 7) at 224; torchvision's Video Swin swin3d_t on
16x224x224 clips; MONAI's SwinUNETR (feature size 48) on 96^3 volumes, where MONAI is installed.
Groups:
- `{train,infer}-{cifar,224,video,3d}-{model}`: one training step (forward, loss, backward, AdamW
  step) or an inference forward at batch 128 (swin3d_t 8, swin_unetr 2); swin_cifar also at the
  seed's batch 64 (`...-b64`). Impls: `eager`, `compiled`, `fused`, `fused+compiled`; for timm
  and Hugging Face also `sdpa` (the model's own SDPA path switched on in every block: timm's
  `fused_attn`, Hugging Face's attn_implementation="sdpa") and `sdpa+compiled`; SwinUNETR:
  `eager`, `sdpa` (MONAI's `use_flash_attention=True`, which MONAI takes only without autograd:
  its training step is the eager path) and `fused`, nothing compiled. The patched reference and
  timm Swin-T at 224 also run as `fused+cudagraph` (the whole step captured in one
  torch.cuda.CUDAGraph and replayed) and `fused+compiled-ro` (torch.compile(mode=
  "reduce-overhead"): Inductor's CUDA graphs), which take the host out of the step.
- `latency-224-{swin_t,timm_swin_t}-b{1,8}`: inference latency, one synchronised forward per round.
  Impls `eager`, `compiled` and `fused+compiled` with torch.compile(mode="reduce-overhead"), and
  `fused+cudagraph`.
Each case first checks that its logits (and in training every parameter gradient) agree with the
eager model's; that first pass is also the compile time (`compile_s`). A case replayed from CUDA
graphs also checks a replayed pass against that uncaptured one; reduce-overhead must capture the
whole model (a skipped capture fails the case). A case that disagrees or raises is skipped with
the reason, recorded in the results. On a CPU only the eager CIFAR forward runs, at batch 4 in
fp32, as group `cpu-infer-cifar-swin_cifar`.
"""
import contextlib

import pytest

from benchmarks.common import (
    GRAD_TOL,
    MODELS,
    ON_GPU,
    OUTPUT_TOL,
    QUICK,
    case,
    check_close,
    check_pass,
    cuda_graphed,
    eager_reference,
    first_call_s,
    fused_launches,
    make_batch,
    make_model,
    make_step,
    measure,
    recorded_as_skip,
    skip_reason,
)

SEED_BATCH = 64  # the seed article's CIFAR-10 batch
LATENCY_BATCHES = (1, 8)
LATENCY_MODELS = ("swin_t", "timm_swin_t")
LATENCY_IMPLS = ("eager", "compiled", "fused+compiled", "fused+cudagraph")
# the patched Swin-T 224 with the host taken out of its step: one CUDA graph, or Inductor's
CAPTURED_MODELS = ("swin_t", "timm_swin_t")
CAPTURED_IMPLS = ("fused+cudagraph", "fused+compiled-ro")
REPLAY_CALLS = 2  # reduce-overhead: a warm-up call, a recording call, then replays
CPU_BATCH = 4


def model_impls(name):
    spec = MODELS[name]
    impls = ("eager", "sdpa", "compiled", "sdpa+compiled", "fused", "fused+compiled")
    impls += CAPTURED_IMPLS if name in CAPTURED_MODELS else ()
    return tuple(i for i in impls
                 if (spec.sdpa or "sdpa" not in i) and (spec.compiled or "compiled" not in i))


def group_name(mode, model, batch):
    spec = MODELS[model]
    return f"{mode}-{spec.tag}-{model}" + ("" if batch == spec.batch else f"-b{batch}")


def cases():
    for mode in ("train", "infer"):
        for model, spec in MODELS.items():
            if not spec.benchmarked:
                continue
            for batch in (spec.batch, SEED_BATCH) if model == "swin_cifar" else (spec.batch,):
                group = group_name(mode, model, batch)
                for impl in model_impls(model):
                    yield case(f"{group}-{impl}", group, impl, group, mode, model, impl, batch,
                               reason=skip_reason(impl, MODELS[model].tag))
    for model in LATENCY_MODELS:
        for batch in LATENCY_BATCHES:
            group = f"latency-{MODELS[model].tag}-{model}-b{batch}"
            for impl in LATENCY_IMPLS:
                yield case(f"{group}-{impl}", group, impl, group, "latency", model, impl, batch,
                           reason=skip_reason(impl))
    group = "cpu-infer-cifar-swin_cifar"
    yield pytest.param(group, "infer", "swin_cifar", "eager", CPU_BATCH, id=f"{group}-eager",
                       marks=[pytest.mark.skipif(ON_GPU, reason="CPU baseline; the GPU cases ran")])


@contextlib.contextmanager
def cuda_graphs_or_error():
    """Inductor raises where it would skip CUDA graphs (an op that cannot be captured) instead of
    silently running the graph uncaptured; also checks its skip counter."""
    from torch._dynamo.utils import counters
    from torch._inductor import config
    skips = counters["inductor"]["cudagraph_skips"]
    with config.patch({"triton.cudagraph_or_error": True}):
        yield
    if counters["inductor"]["cudagraph_skips"] != skips:
        raise RuntimeError("torch.compile(mode='reduce-overhead') skipped CUDA graphs")


def compile_mode(mode, impl):
    """reduce-overhead (CUDA graphs) for the latency cases' and the -ro impls' compilation."""
    if "compiled" in impl and (mode == "latency" or impl.endswith("-ro")):
        return "reduce-overhead"
    return None


def replayed_pass(impl, model, mode, images, labels):
    """The check pass replayed from CUDA graphs, as the timed step will run: captured in one
    graph (cudagraph), or called until Inductor's graphs replay (reduce-overhead)."""
    def check():
        return check_pass(model, mode, images, labels)
    if "cudagraph" in impl:
        return cuda_graphed(check)()
    for _ in range(REPLAY_CALLS):
        check()
    return check()


def check_replay(impl, model, mode, images, labels, logits, grads):
    """The replayed pass agrees with the uncaptured one: a capture that went wrong posts no
    number."""
    replayed_logits, replayed_grads = replayed_pass(impl, model, mode, images, labels)
    check_close(replayed_logits, logits, OUTPUT_TOL, f"{impl} replayed logits")
    if grads is not None:
        check_close(replayed_grads, grads, GRAD_TOL, f"{impl} replayed parameter gradients")


@pytest.mark.parametrize("group, mode, model_name, impl, batch", cases())
def test_model(benchmark, group, mode, model_name, impl, batch):
    latency = mode == "latency"
    pass_mode = "infer" if latency else mode
    graphs = compile_mode(mode, impl)
    captured = graphs is not None or "cudagraph" in impl
    spec = MODELS[model_name]
    with recorded_as_skip(impl), \
            cuda_graphs_or_error() if graphs else contextlib.nullcontext():
        model = make_model(model_name, impl, pass_mode, compile_mode=graphs)
        images, labels = make_batch(model_name, batch)
        ref_logits, ref_grads = eager_reference(model_name, pass_mode, batch)

        launches = fused_launches() if "fused" in impl else 0
        compile_s, (logits, grads) = first_call_s(
            lambda: check_pass(model, pass_mode, images, labels))
        if "fused" in impl and fused_launches() == launches:
            raise RuntimeError("the fused kernels never ran")
        check_close(logits, ref_logits, OUTPUT_TOL, f"{impl} logits")
        if grads is not None:
            check_close(grads, ref_grads, GRAD_TOL, f"{impl} parameter gradients")
        if captured:
            check_replay(impl, model, pass_mode, images, labels, logits, grads)
        del logits, grads

        warmup, rounds = (2, 3) if QUICK else (3, spec.rounds)
        if latency:
            warmup, rounds = 3, 10 if QUICK else 30
        if not ON_GPU:
            warmup, rounds = 1, 3
        step = make_step(model, pass_mode, images, labels, capturable="cudagraph" in impl)
        if "cudagraph" in impl:
            step = cuda_graphed(step)
        seconds = measure(benchmark, step, group, warmup, rounds, impl=impl, model=model_name,
                          mode=mode, batch=batch, compile_s=compile_s, compile_mode=graphs,
                          dtype="bf16 autocast" if ON_GPU else "fp32")
    if seconds is not None:
        benchmark.extra_info["images_per_sec"] = batch / seconds
