"""The models `train` builds by name, and the record a checkpoint keeps to rebuild one.

    swin_cifar                    the seed article's CIFAR model (the default; size options apply)
    swin_t, swin_s, swin_b        the seed article's reference Swin at its ImageNet sizes
    torchvision:NAME              torchvision.models.NAME, e.g. torchvision:swin_t, swin_v2_s
    timm:NAME                     timm.create_model(NAME), e.g. timm:swin_tiny_patch4_window7_224

A record is a dict of plain values: {"arch": "article-swin", embed_dim, depths, heads,
window_size, patch_size, mlp_ratio, n_classes} for the article's model, {"arch": "torchvision",
"name", "n_classes"} or {"arch": "timm", "name", "img_size", "n_classes"}. No weights are
downloaded: every model starts from its own random initialisation.
"""
import importlib
import inspect

import swin_fused
from swin_fused import reference
from swin_fused.cifar.errors import CliError

ARTICLE = "article-swin"
ARCHES = (ARTICLE, "torchvision", "timm")
DEFAULT = "swin_cifar"
# the seed article's swin_cifar(patch_size=2, n_classes=10, mlp_ratio=1)
SWIN_CIFAR = {"arch": ARTICLE, "embed_dim": 192, "depths": [2, 6, 2], "heads": [3, 6, 12],
              "window_size": 7, "patch_size": 2, "mlp_ratio": 1}
SIZE_OPTIONS = ("embed_dim", "depths", "heads", "window_size", "patch_size")
REFERENCE_NAMES = ("swin_t", "swin_s", "swin_b")
CIFAR_IMAGE_SIZE, IMAGENET_IMAGE_SIZE = 32, 224
# the classes FSDP shards one by one, by name so that a patched subclass still counts
BLOCK_CLASSES = {"SwinTransformerBlock", "SwinTransformerBlockV2", "SwinTransformerV2Block",
                 "SwinTransformerV2CrBlock"}


def default_image_size(name):
    return CIFAR_IMAGE_SIZE if name == DEFAULT else IMAGENET_IMAGE_SIZE


def check_name(name):
    """None when `name` is a model this tool builds, else the reason it is not."""
    if name == DEFAULT or name in REFERENCE_NAMES:
        return None
    family, _, model_name = name.partition(":")
    if family == "torchvision":
        import torchvision
        known = [m for m in torchvision.models.list_models(module=torchvision.models)
                 if m.startswith("swin")]
        listed = ", ".join(known)
    elif family == "timm":
        try:
            import timm
        except ImportError:
            return "timm is not installed (pip install timm)"
        known, listed = timm.list_models("swin*"), "timm.list_models('swin*') names them"
    else:
        return (f"unknown model {name!r}: use {DEFAULT}, {', '.join(REFERENCE_NAMES)}, "
                "torchvision:NAME or timm:NAME")
    if model_name not in known:
        return f"{family} has no Swin model {model_name!r} ({listed})"
    return None


def record(name, sizes, image_size):
    """The record of model `name` (classes not yet known); `sizes` overrides swin_cifar's."""
    if name == DEFAULT:
        return {**SWIN_CIFAR, **sizes}
    if name in REFERENCE_NAMES:
        return _reference_record(name)
    family, _, model_name = name.partition(":")
    if family == "timm":
        return {"arch": "timm", "name": model_name, "img_size": image_size}
    return {"arch": family, "name": model_name}


def _reference_record(name):
    factory = _defaults(getattr(reference, name))
    model = _defaults(reference.SwinTransformer)
    return {"arch": ARTICLE, "embed_dim": factory["hidden_dim"], "depths": list(factory["layers"]),
            "heads": list(factory["heads"]), "window_size": model["window_size"],
            "patch_size": model["patch_size"], "mlp_ratio": model["mlp_ratio"]}


def _defaults(function):
    return {name: p.default for name, p in inspect.signature(function).parameters.items()}


def describe(model_record):
    """A short name for messages: the family's model name, or the article model's sizes."""
    if model_record["arch"] != ARTICLE:
        return f"{model_record['arch']}:{model_record['name']}"
    return ("article Swin " + ", ".join(f"{key} {model_record[key]}" for key in
                                        (*SIZE_OPTIONS, "mlp_ratio")))


def build(model_record, fused):
    """The model of a record, randomly initialised; `fused` swaps in the fused attention."""
    arch, n_classes = model_record["arch"], model_record["n_classes"]
    if arch == ARTICLE:
        model = reference.swin_cifar(
            hidden_dim=model_record["embed_dim"], layers=tuple(model_record["depths"]),
            heads=tuple(model_record["heads"]), window_size=model_record["window_size"],
            patch_size=model_record["patch_size"], mlp_ratio=model_record["mlp_ratio"],
            n_classes=n_classes)
    elif arch == "torchvision":
        import torchvision
        model = torchvision.models.get_model(model_record["name"], weights=None,
                                             num_classes=n_classes)
    elif arch == "timm":
        model = importlib.import_module("timm").create_model(
            model_record["name"], pretrained=False, num_classes=n_classes,
            img_size=model_record["img_size"])
    else:
        raise CliError(f"unknown model architecture {arch!r}: use one of {', '.join(ARCHES)}")
    if not fused:
        return model
    try:
        return swin_fused.patch(model)
    except ValueError as error:
        raise CliError(f"{describe(model_record)} cannot be fused ({error}): use --no-fused") \
            from None


def swin_blocks(model):
    """The Swin Transformer blocks of `model`, in order: the units FSDP shards one by one."""
    return [module for module in model.modules()
            if any(cls.__name__ in BLOCK_CLASSES for cls in type(module).__mro__)]
