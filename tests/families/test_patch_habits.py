"""A patched model survives what users do with a model, and `unpatch` works after each: torch.save
and torch.load (in a fresh process too), copy.deepcopy, DataParallel replicas, DDP and FSDP2,
activation checkpointing, torch.compile (also where a layer falls back), torch.export,
torch.func.functional_call, print; and hooks on modules the fused path skips are never dropped.

The seed article's model, one stage of two blocks (8x8 map, window 7: padded, shifted, masked).
"""
import copy
import importlib
import os
import socket
import subprocess
import sys
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import swin_fused
from swin_fused import ops
from swin_fused import reference as R
from swin_fused.patching import FusedModule, patched_count
from tests.helpers import (
    DEVICE,
    ROOT,
    assert_as_accurate_as_eager,
    assert_matches_unpatched,
    kernel_launches,
    output_and_grads,
    parameter_grads,
    randomized,
)

# the module, which `torch.nn.parallel.replicate` (the function) hides
replicate_module = importlib.import_module("torch.nn.parallel.replicate")


class ArticleBlockSubclass(R.SwinTransformerBlock):
    """A user's own subclass of a block the patch fuses."""


def tiny_model():
    model = randomized(R.swin_cifar(patch_size=2, n_classes=10, mlp_ratio=1, hidden_dim=24,
                                    layers=(2,), heads=(1,)), table_scale=0.5)
    model.layers[0].blocks[1].__class__ = ArticleBlockSubclass
    return model


def tiny_input():
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)).to(DEVICE)


def blocks(model):
    return [m for m in model.modules() if isinstance(m, R.SwinTransformerBlock)]


def output_only(model, x):
    return {"output": model(x)}


def assert_unpatches(model, x):
    """unpatch gives every block its own class back and the kernels stop running."""
    swin_fused.unpatch(model)
    assert patched_count(model) == 0
    assert not any(isinstance(m, FusedModule) for m in model.modules())
    assert [type(b) for b in blocks(model)] == [R.SwinTransformerBlock, ArticleBlockSubclass]
    with kernel_launches() as launches:
        model(x)
    assert launches.get("fwd", 0) == 0


def test_print_names_the_fused_layers():
    model = swin_fused.patch(tiny_model())
    text = repr(model)
    assert "FusedSwinTransformerBlock(" in text and "FusedArticleBlockSubclass(" in text
    swin_fused.unpatch(model)
    assert "Fused" not in repr(model)


def test_save_and_load_in_a_fresh_process_keeps_the_patch(tmp_path):
    unpatched, x = tiny_model(), tiny_input()
    torch.save(swin_fused.patch(copy.deepcopy(unpatched)), tmp_path / "model.pt")
    torch.save({"x": x, "eager": unpatched(x).detach(),
                "exact": copy.deepcopy(unpatched).double()(x.double()).detach()},
               tmp_path / "io.pt")
    code = f"""
import torch, swin_fused
from swin_fused.patching import patched_count
from tests.helpers import assert_as_accurate_as_eager, kernel_launches
model = torch.load({str(tmp_path / "model.pt")!r}, weights_only=False)
io = torch.load({str(tmp_path / "io.pt")!r})
assert patched_count(model) == 2, patched_count(model)
with kernel_launches() as launches:
    out = model(io["x"])
assert launches == {{"fwd": 2}}, launches
assert_as_accurate_as_eager(out, io["eager"], io["exact"], torch.float32, "loaded model")
swin_fused.unpatch(model)
assert [type(b).__name__ for b in model.layers[0].blocks] == [
    "SwinTransformerBlock", "ArticleBlockSubclass"]
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_deepcopy_keeps_the_patch():
    unpatched, x = tiny_model(), tiny_input()
    model = swin_fused.patch(copy.deepcopy(unpatched))
    clone = copy.deepcopy(model)
    assert [type(b) for b in blocks(clone)] == [type(b) for b in blocks(model)]
    with kernel_launches() as launches:
        got = output_and_grads(clone, x)
    assert launches == {"fwd": 2, "bwd": 2}
    assert_matches_unpatched(got, unpatched, output_and_grads, x)
    assert_unpatches(clone, x)
    assert patched_count(model) == 2


def test_data_parallel_replicas_compute_with_their_own_parameters(monkeypatch):
    """nn.parallel.replicate, as DataParallel runs it, with CPU copies standing in for devices:
    replica j's floating-point tensors are the original's times (1 + (j + 1) / 10)."""
    def copies(tensors, devices, detach=False):
        return [[t * (1 + (j + 1) / 10) if t.is_floating_point() else t for t in tensors]
                for j in range(len(devices))]
    monkeypatch.setattr(replicate_module, "_broadcast_coalesced_reshape", copies)
    unpatched, x = tiny_model(), tiny_input()
    model = swin_fused.patch(copy.deepcopy(unpatched))
    replicas = replicate_module.replicate(model, [0, 1])
    for j, replica in enumerate(replicas):
        assert all(b.forward.__self__ is b for b in blocks(replica))
        with kernel_launches() as launches:
            got = output_only(replica, x)
        assert launches == {"fwd": 2}
        scaled = copy.deepcopy(unpatched)
        with torch.no_grad():
            for p in scaled.parameters():
                p.mul_(1 + (j + 1) / 10)
        assert_matches_unpatched(got, scaled, output_only, x)
    assert_unpatches(model, x)


def _distributed_worker(rank, port, path, out_dir):
    """One of two gloo processes: a DDP and an FSDP2 training step of the saved patched model,
    each on its half of the batch; rank 0 saves the gradients."""
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    model, x = torch.load(path, weights_only=False), tiny_input()[rank:rank + 1]
    grads = {}
    ddp = DistributedDataParallel(copy.deepcopy(model))
    ddp(x).square().sum().backward()
    grads["ddp"] = parameter_grads(ddp.module)
    sharded = copy.deepcopy(model)
    for block in blocks(sharded):
        fully_shard(block)
    fully_shard(sharded)
    with kernel_launches() as launches:
        sharded(x).square().sum().backward()
    assert launches == {"fwd": 2, "bwd": 2}, launches
    grads["fsdp2"] = {name: grad.full_tensor() for name, grad in parameter_grads(sharded).items()}
    swin_fused.unpatch(sharded)
    assert patched_count(sharded) == 0
    assert [type(b).__name__ for b in blocks(sharded)] == [
        "FSDPSwinTransformerBlock", "FSDPArticleBlockSubclass"]
    with kernel_launches() as launches:
        sharded(x)
    assert launches.get("fwd", 0) == 0
    if rank == 0:
        torch.save(grads, out_dir / "grads.pt")
    dist.destroy_process_group()


@pytest.mark.skipif(DEVICE != "cpu", reason="two gloo processes on CPU, in the interpreter; a GPU "
                    "machine has one GPU")
def test_ddp_and_fsdp2_match_one_process(tmp_path):
    unpatched, x = tiny_model(), tiny_input()
    torch.save(swin_fused.patch(copy.deepcopy(unpatched)), tmp_path / "model.pt")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_distributed_worker, args=(port, tmp_path / "model.pt", tmp_path), nprocs=2)
    grads = torch.load(tmp_path / "grads.pt")

    def one_process(model, x):
        # DDP and FSDP2 average the two ranks' gradients
        model.zero_grad(set_to_none=True)
        (model(x[:1]).square().sum() + model(x[1:]).square().sum()).div(2).backward()
        return parameter_grads(model)
    for name in ("ddp", "fsdp2"):
        assert_matches_unpatched(grads[name], unpatched, one_process, x)


def test_activation_checkpointing():
    """torch.utils.checkpoint around a shifted block: its forward runs again in the backward."""
    unpatched = tiny_model().layers[0]
    unpatched.blocks[1].h = unpatched.blocks[1].w = 8
    tokens = torch.randn(2, 64, 24, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    mask = unpatched.create_mask(tokens, 8, 8)

    def run(layer, x):
        block, x = layer.blocks[1], x.detach().requires_grad_()
        out = torch.utils.checkpoint.checkpoint(block, x, mask.to(x.dtype), use_reentrant=False)
        out.square().sum().backward()
        return {"output": out, "input grad": x.grad, **parameter_grads(block)}
    layer = swin_fused.patch(copy.deepcopy(unpatched))
    with kernel_launches() as launches:
        got = run(layer, tokens)
    assert launches == {"fwd": 2, "bwd": 1}
    assert_matches_unpatched(got, unpatched, run, tokens)
    swin_fused.unpatch(layer)
    assert type(layer.blocks[1]) is ArticleBlockSubclass


def test_compile_fullgraph_when_every_layer_falls_back(monkeypatch):
    """float64 runs the eager op: torch.compile traces it and the warning in one graph."""
    monkeypatch.setenv("SWIN_FUSED_STRICT", "0")
    monkeypatch.setattr(ops, "_warned", set())
    unpatched, x = tiny_model(), tiny_input()
    model = swin_fused.patch(copy.deepcopy(unpatched)).double()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = compiled(x.double())
    assert [str(w.message) for w in caught if "swin_fused" in str(w.message)] == [
        "swin_fused: dtype torch.float64 is not one of float16, bfloat16, float32; running eager "
        "PyTorch"]
    exact = copy.deepcopy(unpatched).double()(x.double())
    assert_as_accurate_as_eager(out, None, exact, torch.float64, "compiled fallback")
    assert_unpatches(model.float(), x)


def test_compile_fullgraph_fallback_raises_in_strict_mode():
    model = R.swin_cifar(patch_size=2, n_classes=10, mlp_ratio=1, hidden_dim=24, layers=(2,),
                         heads=(1,), attn_dropout=0.1).to(DEVICE)
    swin_fused.patch(model)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    # raised while tracing, so dynamo wraps it: the message names the FallbackError
    with pytest.raises(RuntimeError, match="FallbackError: swin_fused: attention dropout"):
        compiled(tiny_input())


def test_torch_export():
    unpatched, x = tiny_model(), tiny_input()
    model = swin_fused.patch(copy.deepcopy(unpatched))
    exported = torch.export.export(model, (x,)).module()
    with kernel_launches() as launches:
        got = output_only(exported, x)
    assert launches == {"fwd": 2}
    assert_matches_unpatched(got, unpatched, output_only, x)
    assert_unpatches(model, x)


def test_functional_call_uses_the_given_parameters():
    unpatched, x = tiny_model(), tiny_input()
    model = swin_fused.patch(copy.deepcopy(unpatched))
    params = {name: p.detach() * 1.1 for name, p in model.named_parameters()}
    with kernel_launches() as launches:
        got = {"output": torch.func.functional_call(model, params, (x,))}
    assert launches == {"fwd": 2}
    scaled = copy.deepcopy(unpatched)
    scaled.load_state_dict(params, strict=False)
    assert_matches_unpatched(got, scaled, output_only, x)
    assert_unpatches(model, x)


@pytest.mark.parametrize("hooked", ["attn", "attn.softmax", "attn.attn_dropout"])
def test_hook_on_a_skipped_module_runs_the_block_eager_and_warns(hooked, monkeypatch):
    monkeypatch.setenv("SWIN_FUSED_STRICT", "0")
    monkeypatch.setattr(ops, "_warned", set())
    unpatched, x = tiny_model(), tiny_input()
    model = swin_fused.patch(copy.deepcopy(unpatched))
    calls = []
    # registered after patching: the fused forward checks on every call
    model.layers[0].blocks[1].get_submodule(hooked).register_forward_hook(
        lambda *_: calls.append(1))
    with warnings.catch_warnings(record=True) as caught, kernel_launches() as launches:
        warnings.simplefilter("always")
        got = output_only(model, x)
    assert calls == [1] and launches == {"fwd": 1}
    assert [str(w.message) for w in caught if "swin_fused" in str(w.message)] == [
        f"swin_fused: FusedArticleBlockSubclass has hooks on {hooked}, which the fused forward "
        "does not call; running eager PyTorch"]
    assert_matches_unpatched(got, unpatched, output_only, x)


def test_hook_on_a_skipped_module_raises_in_strict_mode():
    model = tiny_model()
    model.layers[0].blocks[0].attn.register_forward_pre_hook(lambda *_: None)
    swin_fused.patch(model)
    with pytest.raises(swin_fused.FallbackError, match="has hooks on attn, which the fused"):
        model(tiny_input())


def test_hook_on_a_module_the_fused_path_calls_keeps_firing():
    model = swin_fused.patch(tiny_model())
    calls = []
    for block in blocks(model):
        block.attn.qkv.register_forward_hook(lambda *_: calls.append(1))
    with kernel_launches() as launches:
        model(tiny_input())
    assert calls == [1, 1] and launches == {"fwd": 2}
