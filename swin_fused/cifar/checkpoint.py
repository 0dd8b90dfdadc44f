"""Checkpoints: save atomically, load safely, convert the seed article's saved models.

A checkpoint is a dict of tensors and plain Python values, so it loads with
`torch.load(..., weights_only=True)`: format, model (the full state_dict, also after FSDP),
optimizer (keyed by parameter name, so any number of processes loads it), scheduler, scaler,
epoch (epochs finished), history, config (model record, classes, image size, run id, training
options) and rng (one state per process). Only `convert` unpickles arbitrary objects.
"""
import contextlib
import math
import os
import pickle
import re
import secrets
import sys
import zipfile

import torch

from swin_fused import reference
from swin_fused.cifar import models
from swin_fused.cifar.errors import CliError, one_line

FORMAT = "swin_fused.cifar checkpoint 2"
# format 1 keyed the optimizer state by parameter index and kept one RNG state
FORMATS = ("swin_fused.cifar checkpoint 1", FORMAT)
# torchvision's CIFAR-10 class names, in label order
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]


def save(checkpoint, path):
    """Write through a temporary file of a unique name, then rename: an interrupted or concurrent
    save never leaves a truncated checkpoint, nor a temporary file, behind."""
    folder, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "xb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def peek(path):
    """(run id, epochs finished) of a checkpoint, read without loading its tensors."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return checkpoint["config"].get("run_id"), checkpoint["epoch"]


def load(path):
    """A checkpoint of this tool, loaded with weights_only=True; a one-line CliError otherwise."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not zipfile.is_zipfile(path):
            raise CliError(f"cannot read {path} as a checkpoint: not a torch.save file") from None
        raise CliError(f"{path} pickles Python objects, not just weights; if the seed article's "
                       "code saved it with torch.save(net), run `python -m swin_fused.cifar "
                       f"convert {path} NEW.pt` first") from None
    except (OSError, RuntimeError, EOFError, ValueError) as error:
        reason = getattr(error, "strerror", None) or one_line(error)
        raise CliError(f"cannot read {path} as a checkpoint: {reason}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") not in FORMATS:
        raise CliError(f"{path} is not a swin_fused.cifar checkpoint; a state_dict or module "
                       "saved by the seed article's code converts with `python -m swin_fused.cifar "
                       f"convert {path} NEW.pt`")
    if checkpoint["config"]["model"].get("arch") not in models.ARCHES:
        raise CliError(f"{path} holds a {checkpoint['config']['model'].get('arch')} model, "
                       f"not one of {', '.join(models.ARCHES)}")
    return checkpoint


def optimizer_by_name(state, model):
    """A format-1 optimizer state (keyed by parameter index) keyed by parameter name."""
    names = [name for name, _ in model.named_parameters()]
    return {"state": {names[index]: value for index, value in state["state"].items()},
            "param_groups": [{**group, "params": [names[index] for index in group["params"]]}
                             for group in state["param_groups"]]}


def load_model(checkpoint, path, fused):
    """The checkpoint's model, rebuilt from its recorded arguments, weights loaded strictly."""
    model = models.build(checkpoint["config"]["model"], fused)
    load_weights(model, checkpoint["model"], path)
    return model


def load_for_inference(path, device, fused):
    """(model in eval mode on `device`, the checkpoint's config) for eval and predict."""
    checkpoint = load(path)
    return load_model(checkpoint, path, fused).to(device).eval(), checkpoint["config"]


def load_weights(model, state_dict, path):
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise CliError(f"{path} holds weights of another architecture: "
                       f"{_first_mismatch(error)}") from None


def _first_mismatch(error, limit=300):
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    first = lines[1] if len(lines) > 1 else lines[0]
    return first if len(first) <= limit else first[:limit] + "..."


def convert(old_path, new_path, classes=None, overwrite=False):
    """Turn the seed article's `torch.save(net)` file (or a saved state_dict) into a checkpoint.

    Unpickles old_path with weights_only=False: this runs whatever code the file names, so the
    caller must trust it. Never replaces new_path unless `overwrite`. Returns the model
    configuration found.
    """
    if os.path.exists(new_path) and not overwrite:
        raise CliError(f"{new_path} exists: pass --overwrite to replace it, or choose another name")
    print(f"convert: unpickling {old_path} with torch.load(weights_only=False), which can run "
          "arbitrary code from the file: convert only files you trust", file=sys.stderr)
    try:
        saved = torch.load(old_path, map_location="cpu", weights_only=False,
                           pickle_module=_ArticlePickle)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError,
            ImportError) as error:
        raise CliError(f"{old_path} cannot be unpickled: {one_line(error)}") from None
    state_dict = _state_dict_of(saved, old_path)
    model_config = infer_model_config(state_dict, old_path)
    classes = classes or _default_classes(model_config["n_classes"])
    if len(classes) != model_config["n_classes"]:
        raise CliError(f"{old_path} has {model_config['n_classes']} classes but --classes names "
                       f"{len(classes)}")
    model = models.build(model_config, fused=False)
    load_weights(model, state_dict, old_path)
    os.makedirs(os.path.dirname(os.path.abspath(new_path)), exist_ok=True)
    save({"format": FORMAT, "model": model.state_dict(), "epoch": 0, "history": {},
          "config": {"model": model_config, "classes": list(classes), "image_size": 32,
                     "converted_from": os.path.abspath(old_path)}}, new_path)
    return model_config


class _ArticlePickle:
    """pickle, except that the article's classes resolve to swin_fused.reference wherever the
    article's script defined them (its __main__ or its own module)."""
    load = pickle.load

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            article_class = getattr(reference, name, None)
            if (not module.startswith("torch") and isinstance(article_class, type)
                    and article_class.__module__ == reference.__name__):
                return article_class
            return super().find_class(module, name)


def _state_dict_of(saved, path):
    if isinstance(saved, torch.nn.DataParallel):
        saved = saved.module
    if isinstance(saved, torch.nn.Module):
        saved = saved.state_dict()
    if not isinstance(saved, dict) or not all(isinstance(v, torch.Tensor) for v in saved.values()):
        raise CliError(f"{path} holds a {type(saved).__name__}, not a model or a state_dict")
    # DataParallel and torch.compile prefix the keys of the module they wrap
    return {re.sub(r"^(module\.|_orig_mod\.)+", "", key): value for key, value in saved.items()}


def infer_model_config(state_dict, path):
    """The article Swin's constructor arguments, read off the shapes of its weights."""
    try:
        embed_dim, _, patch_size, _ = state_dict["patch_embed.proj.weight"].shape
        blocks = [re.match(r"layers\.(\d+)\.blocks\.(\d+)\.", key) for key in state_dict]
        n_layers = 1 + max(int(m[1]) for m in blocks if m)
        depths = [1 + max(int(m[2]) for m in blocks if m and int(m[1]) == i)
                  for i in range(n_layers)]
        tables = [state_dict[f"layers.{i}.blocks.0.attn.relative_position_bias_table"]
                  for i in range(n_layers)]
        heads = [table.shape[1] for table in tables]
        window_size = (math.isqrt(tables[0].shape[0]) + 1) // 2
        hidden = state_dict["layers.0.blocks.0.mlp.fc1.weight"].shape[0]
        n_classes = state_dict["head.weight"].shape[0]
    except (KeyError, ValueError, IndexError, AttributeError):
        raise CliError(f"{path} does not hold the seed article's Swin Transformer") from None
    mlp_ratio = hidden // embed_dim if hidden % embed_dim == 0 else hidden / embed_dim
    return {"arch": models.ARTICLE, "embed_dim": embed_dim, "depths": depths, "heads": heads,
            "window_size": window_size, "patch_size": patch_size, "mlp_ratio": mlp_ratio,
            "n_classes": n_classes}


def _default_classes(n_classes):
    if n_classes != len(CIFAR10_CLASSES):
        raise CliError(f"the model has {n_classes} classes: name them with --classes a,b,c,...")
    return CIFAR10_CLASSES
