"""`train`: the seed article's training loop with progress bars, TensorBoard, checkpoints, plots.

Seed defaults: Adam(lr 1e-4, betas (0.5, 0.999)), cross-entropy, ReduceLROnPlateau(factor 0.94,
patience 1, min_lr 1e-6) stepped on each epoch's train loss. RUN_DIR receives last.pt (every
epoch), best.pt (best test accuracy), TensorBoard events and loss.png, accuracy.png, lr.png.
"""
import contextlib
import dataclasses
import os
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from swin_fused.cifar import checkpoint as ckpt
from swin_fused.cifar import data, plots
from swin_fused.cifar.errors import CliError

LR = 1e-4
BETAS = (0.5, 0.999)
AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
HISTORY_KEYS = ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_time",
                "images_per_s")


def make_optimizer(model):
    return torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS)


def make_scheduler(optimizer):
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.94, patience=1,
                                                      min_lr=1e-6)


def autocast(device, amp):
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def train_step(model, images, labels, optimizer, scaler, amp):
    """One optimisation step; returns the batch's loss (a detached tensor) and its logits."""
    with autocast(images.device, amp):
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
    optimizer.zero_grad()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), logits.detach()


def run_epoch(model, loader, device, amp, desc, optimizer=None, scaler=None):
    """One pass over `loader`, training when given an optimizer: (loss, accuracy, images seen)."""
    training = optimizer is not None
    prefix = "Train" if training else "Test"
    model.train(training)
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(loader, desc=desc)
    with torch.set_grad_enabled(training):
        for images, labels in bar:
            images, labels = images.to(device), labels.to(device)
            if training:
                loss, logits = train_step(model, images, labels, optimizer, scaler, amp)
            else:
                with autocast(device, amp):
                    logits = model(images)
                    loss = F.cross_entropy(logits, labels)
            total_loss += loss.item() * len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
            seen += len(labels)
            bar.set_postfix({f"{prefix} Acc": f"{correct / seen:.3f}",
                             f"{prefix} Loss": f"{total_loss / seen:.4g}"})
    return total_loss / seen, correct / seen, seen


def resolve_device(name):
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CliError(f"unknown device {name!r}: use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError("CUDA is not available here: use --device cpu")
    return device


def prepare_run_dir(path):
    """Create RUN_DIR and prove it writable now, not after the first epoch."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise CliError(f"cannot write to the run directory {path}: "
                       f"{error.strerror or error}") from None


def rng_state(loader_generator):
    state = {"torch": torch.get_rng_state(), "loader": loader_generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state, loader_generator):
    torch.set_rng_state(state["torch"])
    loader_generator.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def new_config(args):
    return {"model": {"arch": ckpt.ARCH, "embed_dim": args.embed_dim, "depths": args.depths,
                      "heads": args.heads, "window_size": args.window_size,
                      "patch_size": args.patch_size, "mlp_ratio": 1, "n_classes": None},
            "classes": None, "image_size": args.image_size}


def training_options(args):
    return {"data_dir": os.path.abspath(args.data_dir), "epochs": args.epochs,
            "batch_size": args.batch_size, "amp": args.amp, "augment": args.augment,
            "fused": args.fused, "compile": args.compile, "seed": args.seed}


@dataclasses.dataclass
class TrainingRun:
    """Everything a checkpoint must hold for training to go on exactly where it stopped."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    scaler: torch.amp.GradScaler
    loader_generator: torch.Generator
    config: dict
    history: dict
    epoch: int = 0

    @classmethod
    def start(cls, config, args, device):
        torch.manual_seed(args.seed)
        model = ckpt.build_model(config["model"], args.fused).to(device)
        optimizer = make_optimizer(model)
        return cls(model, optimizer, make_scheduler(optimizer),
                   torch.amp.GradScaler(device.type, enabled=args.amp == "fp16"),
                   torch.Generator().manual_seed(args.seed), config,
                   {key: [] for key in HISTORY_KEYS})

    def restore(self, checkpoint, path):
        ckpt.load_weights(self.model, checkpoint["model"], path)
        # a converted article model has weights only: it starts a fresh run from them
        if "optimizer" not in checkpoint:
            return
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        restore_rng(checkpoint["rng"], self.loader_generator)
        self.epoch, self.history = checkpoint["epoch"], checkpoint["history"]

    def checkpoint(self):
        return {"format": ckpt.FORMAT, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": self.epoch, "history": self.history, "config": self.config,
                "rng": rng_state(self.loader_generator)}


def train(args):
    device = resolve_device(args.device)
    prepare_run_dir(args.out)
    resumed = ckpt.load(args.resume) if args.resume else None
    # a resumed run keeps its model; the command line sets how training goes on
    config = dict(resumed["config"]) if resumed else new_config(args)
    config["train"] = training_options(args)

    train_set = data.load_split(args.data_dir, True,
                                data.train_transform(config["image_size"], args.augment))
    test_set = data.load_split(args.data_dir, False, data.eval_transform(config["image_size"]))
    data.check_classes(test_set, train_set.classes, "the test split")
    if resumed:
        data.check_classes(train_set, config["classes"], args.data_dir)
    else:
        config["classes"] = list(train_set.classes)
        config["model"]["n_classes"] = len(train_set.classes)

    run = TrainingRun.start(config, args, device)
    if resumed:
        run.restore(resumed, args.resume)
    if run.epoch >= args.epochs:
        raise CliError(f"{args.resume} has already trained {run.epoch} epochs: "
                       f"pass --epochs above {run.epoch} to go on")
    loaders = (data.loader(train_set, args.batch_size, True, args.workers, run.loader_generator),
               data.loader(test_set, args.batch_size, False, args.workers))
    runner = torch.compile(run.model) if args.compile else run.model
    n_params = sum(p.numel() for p in run.model.parameters())
    print(f"model: {config['model']} ({n_params:,} parameters), "
          f"{'fused' if args.fused else 'eager'} attention, {device}, amp {args.amp}; data: "
          f"{len(train_set)} train / {len(test_set)} test images, classes {config['classes']}",
          flush=True)

    resume_from = args.resume  # what an interrupted run goes on from
    # purge_step drops the events of epochs a resumed run is about to train again
    writer = SummaryWriter(args.out, purge_step=run.epoch + 1 if resumed else None)
    try:
        while run.epoch < args.epochs:
            train_one_epoch(run, runner, loaders, device, args)
            log_epoch(writer, run.history, run.epoch)
            save_checkpoints(run, args.out)
            resume_from = os.path.join(args.out, "last.pt")
            plots.save_history_plots(run.history, args.out)
    except KeyboardInterrupt:
        note = f"continue with --resume {resume_from}" if resume_from else "nothing was saved"
        print(f"interrupted before epoch {run.epoch + 1} finished: {note}", file=sys.stderr)
        raise
    finally:
        writer.close()


def train_one_epoch(run, runner, loaders, device, args):
    """Train and test one epoch, step the scheduler, record and print the epoch's numbers."""
    train_loader, test_loader = loaders
    lr = run.optimizer.param_groups[0]["lr"]
    tag = f"Epoch {run.epoch + 1}/{args.epochs}"
    start = time.perf_counter()
    train_loss, train_acc, n_images = run_epoch(runner, train_loader, device, args.amp,
                                                f"Train {tag}", run.optimizer, run.scaler)
    train_time = time.perf_counter() - start
    test_loss, test_acc, _ = run_epoch(runner, test_loader, device, args.amp, f"Test {tag}")
    epoch_time = time.perf_counter() - start
    run.scheduler.step(train_loss)
    run.epoch += 1
    for key, value in zip(HISTORY_KEYS, (train_loss, train_acc, test_loss, test_acc, lr,
                                         epoch_time, n_images / train_time)):
        run.history[key].append(value)
    print(f"Epoch [{run.epoch:>3d}/{args.epochs:>3d}] Train Loss:{train_loss:.6f} "
          f"Train Acc:{100 * train_acc:.2f}% Test Loss:{test_loss:.6f} "
          f"Test Acc:{100 * test_acc:.2f}% Learning Rate:{lr:.6f} "
          f"Time:{epoch_time:.1f}s Speed:{n_images / train_time:.1f} img/s", flush=True)


def log_epoch(writer, history, epoch):
    for tag, key in (("loss/train", "train_loss"), ("loss/test", "test_loss"),
                     ("accuracy/train", "train_acc"), ("accuracy/test", "test_acc"),
                     ("learning_rate", "lr")):
        writer.add_scalar(tag, history[key][-1], epoch)
    writer.flush()


def save_checkpoints(run, run_dir):
    """last.pt every epoch; best.pt when the test accuracy is the best so far."""
    checkpoint = run.checkpoint()
    ckpt.save(checkpoint, os.path.join(run_dir, "last.pt"))
    if run.history["test_acc"][-1] >= max(run.history["test_acc"]):
        ckpt.save(checkpoint, os.path.join(run_dir, "best.pt"))
