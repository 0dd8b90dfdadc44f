"""Command line of `python -m swin_fused.cifar`: train, eval, predict, convert.

Known failures (bad paths, images, checkpoints, datasets, an unwritable run directory) end in one
line on stderr and exit status 1; usage errors exit 2; Ctrl-C exits 130.
"""
import argparse
import sys

import torch

from swin_fused.cifar import checkpoint as ckpt
from swin_fused.cifar.errors import CliError
from swin_fused.cifar.evaluate import evaluate
from swin_fused.cifar.predict import predict
from swin_fused.cifar.train import train

PROG = "python -m swin_fused.cifar"
DEFAULTS = ckpt.DEFAULT_MODEL


def build_parser():
    parser = argparse.ArgumentParser(prog=PROG, description=(
        "Train, evaluate and use the seed article's Swin Transformer on CIFAR-10 (or any "
        "image-folder dataset), with swin_fused's fused window attention."))
    commands = parser.add_subparsers(dest="command", required=True)
    _add_train(commands)
    _add_eval(commands)
    _add_predict(commands)
    _add_convert(commands)
    return parser


def _add_train(commands):
    parser = commands.add_parser(
        "train", help="train a model; RUN_DIR gets checkpoints, TensorBoard events and plots")
    parser.add_argument("--data-dir", required=True, help=(
        "holds cifar-10-batches-py (downloaded if missing and online) or "
        "train/<class>/*.png and test/<class>/*.png"))
    parser.add_argument("--out", required=True, metavar="RUN_DIR")
    parser.add_argument("--epochs", type=int, default=20,
                        help="total epochs, resumed ones included (default 20)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--amp", choices=("none", "fp16", "bf16"), default="none")
    parser.add_argument("--compile", action="store_true", help="run the model via torch.compile")
    parser.add_argument("--augment", action="store_true",
                        help="random crop (padding 4) and horizontal flip of training images")
    parser.add_argument("--resume", metavar="CKPT", help=(
        "continue the run saved in CKPT (its model, classes and image size win over the "
        "model options)"))
    parser.add_argument("--seed", type=int, default=0)
    model = parser.add_argument_group("model (defaults: the seed's swin_cifar)")
    model.add_argument("--embed-dim", type=int, default=DEFAULTS["embed_dim"])
    model.add_argument("--depths", type=int, nargs="+", default=DEFAULTS["depths"])
    model.add_argument("--heads", type=int, nargs="+", default=DEFAULTS["heads"])
    model.add_argument("--window-size", type=int, default=DEFAULTS["window_size"])
    model.add_argument("--patch-size", type=int, default=DEFAULTS["patch_size"])
    model.add_argument("--image-size", type=int, default=32, help="images are resized to this")
    _add_runtime_options(parser)
    parser.set_defaults(run=train)


def _add_eval(commands):
    parser = commands.add_parser(
        "eval", help="per-class test accuracy and a PNG grid of sample predictions")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--checkpoint", required=True, metavar="CKPT")
    parser.add_argument("--out", metavar="DIR",
                        help="where predictions.png goes (default: the checkpoint's folder)")
    parser.add_argument("--batch-size", type=int, default=64)
    _add_runtime_options(parser)
    parser.set_defaults(run=evaluate)


def _add_predict(commands):
    parser = commands.add_parser("predict", help="top classes of image files or http(s) URLs")
    parser.add_argument("--checkpoint", required=True, metavar="CKPT")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="a path or an http(s) URL")
    parser.add_argument("--top", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for a URL (default 10)")
    _add_runtime_options(parser, workers=False)
    parser.set_defaults(run=predict)


def _add_convert(commands):
    parser = commands.add_parser("convert", help=(
        "turn the seed article's torch.save(net) file into a checkpoint; unpickles OLD, so only "
        "for files you trust"))
    parser.add_argument("old", metavar="OLD")
    parser.add_argument("new", metavar="NEW")
    parser.add_argument("--classes", type=lambda text: text.split(","),
                        help="comma-separated class names (default: CIFAR-10's)")
    parser.set_defaults(run=_convert)


def _add_runtime_options(parser, workers=True):
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True,
                        help="swin_fused.patch the model (default: on)")
    if workers:
        parser.add_argument("--workers", type=int, default=2, help="data loader processes")


def _convert(args):
    model_config = ckpt.convert(args.old, args.new, args.classes)
    print(f"wrote {args.new}: {model_config}")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train" and len(args.depths) != len(args.heads):
        parser.error(f"--depths {args.depths} and --heads {args.heads} need one value per stage")
    try:
        args.run(args)
    except (CliError, OSError) as error:
        return _fail(_message(error))
    except KeyboardInterrupt:
        return _fail("interrupted", status=130)
    return 0


def _message(error):
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.filename}: {error.strerror}"
    text = str(error)
    # a DataLoader worker's error carries the worker's traceback; its last line is the error
    if "Original Traceback" in text:
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return text


def _fail(message, status=1):
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return status
