"""Whole-model throughput and peak memory: inference and one training step, bf16 autocast.

Groups `{infer,train}-{cifar,224}-{model}`, impls eager, compiled, fused, fused+compiled, all at
batch 128. Each case first checks that its logits (and in training every parameter gradient) agree
with the eager model's; that first pass is also the compile time (`compile_s`). On a CPU only the
eager CIFAR forward runs, at batch 4 in fp32, as group `cpu-infer-cifar-swin_cifar`.
"""
import pytest

from benchmarks.common import (GRAD_TOL, IMPLS, MODELS, ON_GPU, OUTPUT_TOL, QUICK, check_close,
                               check_pass, eager_reference, first_call_s, fused_launches,
                               make_batch, make_model, make_step, measure, skip_reason)

GPU_BATCH = 128
CPU_BATCH = 4


def group_name(mode, model):
    return f"{mode}-{MODELS[model].tag}-{model}"


def cases():
    for mode in ("infer", "train"):
        for model in MODELS:
            for impl in IMPLS:
                reason = skip_reason(impl, MODELS[model].tag)
                yield pytest.param(mode, model, impl, GPU_BATCH,
                                   id=f"{group_name(mode, model)}-{impl}",
                                   marks=[pytest.mark.skip(reason=reason)] if reason else [])
    yield pytest.param("infer", "swin_cifar", "eager", CPU_BATCH,
                       id="cpu-infer-cifar-swin_cifar-eager",
                       marks=[pytest.mark.skipif(ON_GPU, reason="CPU baseline; the GPU cases ran")])


@pytest.mark.parametrize("mode, model_name, impl, batch", cases())
def test_model(benchmark, mode, model_name, impl, batch):
    try:
        model = make_model(model_name, impl, mode)
    except (ValueError, NotImplementedError) as e:
        pytest.skip(f"swin_fused.patch cannot fuse {model_name} yet: {e}")
    images, labels = make_batch(model_name, batch)
    ref_logits, ref_grads = eager_reference(model_name, mode, batch)

    launches = fused_launches() if "fused" in impl else 0
    compile_s, (logits, grads) = first_call_s(lambda: check_pass(model, mode, images, labels))
    if "fused" in impl:
        assert fused_launches() > launches, "the fused kernels never ran"
    check_close(logits, ref_logits, OUTPUT_TOL, f"{impl} logits")
    if grads is not None:
        check_close(grads, ref_grads, GRAD_TOL, f"{impl} parameter gradients")
    del logits, grads

    spec = MODELS[model_name]
    warmup, rounds = (2, 3) if QUICK else (3, spec.rounds)
    group = group_name(mode, model_name)
    if not ON_GPU:
        group, warmup, rounds = "cpu-" + group, 1, 3
    seconds = measure(benchmark, make_step(model, mode, images, labels), group, warmup, rounds,
                      impl=impl, model=model_name, mode=mode, batch=batch, compile_s=compile_s,
                      dtype="bf16 autocast" if ON_GPU else "fp32")
    if seconds is not None:
        benchmark.extra_info["images_per_sec"] = batch / seconds
