"""Command line of `python -m swin_fused.cifar`: train, eval, predict, convert.

Every bad option is a usage error before any work starts: one line on stderr, exit status 2.
Known failures (bad paths, images, checkpoints, datasets, a run folder that holds another run)
end in one line on stderr and exit status 1; Ctrl-C exits 130. Under torchrun the process that
fails says why, prefixed with its rank, and the others exit without a word.
"""
import argparse
import os
import sys

import torch

from swin_fused.cifar import checkpoint as ckpt
from swin_fused.cifar import distributed, models
from swin_fused.cifar.errors import CliError, OtherRankFailed, one_line
from swin_fused.cifar.evaluate import evaluate
from swin_fused.cifar.predict import predict
from swin_fused.cifar.train import RECIPES, train

PROG = "python -m swin_fused.cifar"
DEFAULTS = models.SWIN_CIFAR


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, printed once per torchrun job (by rank 0)."""

    def error(self, message):
        if distributed.environment_rank() == 0:
            print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        self.exit(2)


def positive_int(text):
    return _number(text, int, 1, "a positive integer")


def non_negative_int(text):
    return _number(text, int, 0, "an integer >= 0")


def positive_float(text):
    value = _number(text, float, 0, "a positive number")
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _number(text, kind, least, what):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text} is not {what}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{text} is not {what}")
    return value


def device(text):
    """cpu, cuda or cuda:N, available here."""
    try:
        value = torch.device(text)
    except RuntimeError:
        value = None
    if value is None or value.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}: use cpu, cuda or cuda:N")
    if value.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("CUDA is not available here: use --device cpu")
    if value.type == "cuda" and (value.index or 0) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(
            f"{text}: this machine has {torch.cuda.device_count()} CUDA devices")
    return value


def build_parser():
    parser = Parser(prog=PROG, description=(
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
        "an existing folder: holds cifar-10-batches-py (downloaded into it if missing and "
        "online) or train/<class>/*.png and test/<class>/*.png"))
    parser.add_argument("--out", required=True, metavar="RUN_DIR")
    parser.add_argument("--epochs", type=positive_int, default=20,
                        help="total epochs, resumed ones included (default 20)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help=(
        "global batch (default 64): under torchrun each of N processes takes batch/N"))
    parser.add_argument("--amp", choices=("none", "fp16", "bf16"), default="none")
    parser.add_argument("--compile", action="store_true", help="run the model via torch.compile")
    parser.add_argument("--augment", action="store_true",
                        help="random crop (padding 4) and horizontal flip of training images")
    parser.add_argument("--recipe", choices=tuple(RECIPES), help=(
        "seed: the article's Adam + ReduceLROnPlateau (the default); swin: the Swin paper's "
        "AdamW, warmup + cosine, label smoothing, clipping (default on --resume: the run's)"))
    parser.add_argument("--resume", metavar="CKPT", help=(
        "continue the run saved in CKPT (its model, classes and image size; model options, "
        "where given, must match them)"))
    parser.add_argument("--overwrite", action="store_true", help=(
        "RUN_DIR may hold another run: delete its last.pt, best.pt, loss/accuracy/lr.png and "
        "TensorBoard events first (other files stay)"))
    parser.add_argument("--seed", type=int, help="default 0 (on --resume: the run's seed)")
    parser.add_argument("--fsdp", action="store_true", help=(
        "under torchrun: shard each Swin block and the model with FSDP2 instead of DDP"))
    model = parser.add_argument_group("model (default: the seed's swin_cifar)")
    model.add_argument("--model", metavar="NAME", help=(
        f"{models.DEFAULT}, {', '.join(models.REFERENCE_NAMES)} (the article's reference "
        "sizes), torchvision:NAME (e.g. torchvision:swin_t) or timm:NAME"))
    model.add_argument("--embed-dim", type=positive_int, help=f"default {DEFAULTS['embed_dim']}")
    model.add_argument("--depths", type=positive_int, nargs="+",
                       help=f"default {' '.join(map(str, DEFAULTS['depths']))}")
    model.add_argument("--heads", type=positive_int, nargs="+",
                       help=f"default {' '.join(map(str, DEFAULTS['heads']))}")
    model.add_argument("--window-size", type=positive_int,
                       help=f"default {DEFAULTS['window_size']}")
    model.add_argument("--patch-size", type=positive_int, help=f"default {DEFAULTS['patch_size']}")
    model.add_argument("--image-size", type=positive_int, help=(
        f"images are resized to this (default {models.CIFAR_IMAGE_SIZE} for {models.DEFAULT}, "
        f"{models.IMAGENET_IMAGE_SIZE} for the others)"))
    _add_runtime_options(parser)
    parser.set_defaults(run=train)


def _add_eval(commands):
    parser = commands.add_parser(
        "eval", help="per-class test accuracy and a PNG grid of sample predictions")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--checkpoint", required=True, metavar="CKPT")
    parser.add_argument("--out", metavar="DIR",
                        help="where predictions.png goes (default: the checkpoint's folder)")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    _add_runtime_options(parser)
    parser.set_defaults(run=evaluate)


def _add_predict(commands):
    parser = commands.add_parser("predict", help="top classes of image files or http(s) URLs")
    parser.add_argument("--checkpoint", required=True, metavar="CKPT")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="a path or an http(s) URL")
    parser.add_argument("--top", type=positive_int, default=3)
    parser.add_argument("--timeout", type=positive_float, default=10.0,
                        help="seconds to wait for a URL (default 10)")
    _add_runtime_options(parser, workers=False)
    parser.set_defaults(run=predict)


def _add_convert(commands):
    parser = commands.add_parser("convert", help=(
        "turn the seed article's torch.save(net) file into a checkpoint; unpickles OLD, so only "
        "for files you trust"))
    parser.add_argument("old", metavar="OLD")
    parser.add_argument("new", metavar="NEW", help="created with its folder; never replaced "
                                                   "unless --overwrite")
    parser.add_argument("--classes", type=lambda text: text.split(","),
                        help="comma-separated class names (default: CIFAR-10's)")
    parser.add_argument("--overwrite", action="store_true", help="NEW may exist: replace it")
    parser.set_defaults(run=_convert)


def _add_runtime_options(parser, workers=True):
    parser.add_argument("--device", type=device,
                        default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda or cuda:N (under torchrun: cpu or cuda)")
    parser.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True,
                        help="swin_fused.patch the model (default: on)")
    if workers:
        parser.add_argument("--workers", type=non_negative_int, default=2,
                            help="data loader processes (per process under torchrun)")


def _convert(args):
    model_config = ckpt.convert(args.old, args.new, args.classes, args.overwrite)
    print(f"wrote {args.new}: {model_config}")


def check_options(parser, args):
    """What argparse cannot see option by option; each failure is a usage error."""
    torchrun = distributed.launched_by_torchrun()
    if args.command in ("eval", "predict") and torchrun:
        parser.error(f"{args.command} runs in one process: start it without torchrun")
    if args.command in ("train", "eval") and not os.path.isdir(args.data_dir):
        parser.error(f"--data-dir {args.data_dir} is not a folder: create it (CIFAR-10 is "
                     "downloaded into an existing folder) or name the folder of your dataset")
    if args.command == "train":
        _check_model_options(parser, args)
        _check_processes(parser, args, torchrun)


def _check_model_options(parser, args):
    if args.model is not None and (reason := models.check_name(args.model)):
        parser.error(f"--model: {reason}")
    sizes = {key: getattr(args, key) for key in models.SIZE_OPTIONS
             if getattr(args, key) is not None}
    if sizes and args.model not in (None, models.DEFAULT):
        parser.error(f"--{next(iter(sizes)).replace('_', '-')} sets the size of "
                     f"{models.DEFAULT} only, not of {args.model}")
    size = {**DEFAULTS, **sizes}
    if len(size["depths"]) != len(size["heads"]):
        parser.error(f"--depths {size['depths']} and --heads {size['heads']} need one value per "
                     "stage")
    for stage, heads in enumerate(size["heads"]):
        width = size["embed_dim"] * 2 ** stage
        if width % heads:
            parser.error(f"--embed-dim {size['embed_dim']} makes stage {stage + 1} "
                         f"{width} wide, which its {heads} heads do not divide")


def _check_processes(parser, args, torchrun):
    if args.fsdp and not torchrun:
        parser.error("--fsdp needs torchrun: torchrun --nproc-per-node N -m swin_fused.cifar "
                     "train ... (N = 1 for one GPU)")
    if torchrun and args.device.index is not None:
        parser.error("under torchrun pass --device cuda: each process takes cuda:LOCAL_RANK")
    world_size = distributed.environment_world_size()
    if args.batch_size % world_size:
        parser.error(f"--batch-size {args.batch_size} is the global batch: it must divide "
                     f"evenly over the {world_size} processes")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_options(parser, args)
    try:
        args.run(args)
    except OtherRankFailed:
        return 1
    except (CliError, OSError) as error:
        return _fail(one_line(error))
    except torch.OutOfMemoryError as error:
        return _fail(f"out of memory on {args.device} ({str(error).splitlines()[0]}): lower "
                     "--batch-size")
    except RuntimeError as error:
        if not (distributed.launched_by_torchrun() and distributed.lost_peer(error)):
            raise
        return _fail(f"stopped because another process of the job ended ({str(error)[:200]})")
    except KeyboardInterrupt:
        return _fail("interrupted", status=130)
    return 0


def _fail(message, status=1):
    rank = distributed.environment_rank()
    if status == 130 and rank:
        return status  # rank 0 says what is on disk
    prefix = f"rank {rank}: " if distributed.launched_by_torchrun() else ""
    print(f"{PROG}: error: {prefix}{message}", file=sys.stderr)
    return status
