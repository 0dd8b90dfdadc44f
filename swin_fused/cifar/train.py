"""`train`: the seed article's training loop, in one process or in many under torchrun, with
progress bars, TensorBoard, checkpoints and plots.

The seed recipe (the default): Adam(lr 1e-4, betas (0.5, 0.999)), cross-entropy,
ReduceLROnPlateau(factor 0.94, patience 1, min_lr 1e-6) stepped on each epoch's train loss.
--recipe swin: the Swin paper's AdamW, warmup and cosine decay, label smoothing, clipping.
Under torchrun every process trains its share of each global batch (DDP, or FSDP2 with --fsdp),
losses and accuracies are summed over the processes, and rank 0 alone prints and writes RUN_DIR:
last.pt (every epoch), best.pt (best test accuracy), TensorBoard events, loss/accuracy/lr plots.
"""
import contextlib
import dataclasses
import math
import os
import sys
import tempfile
import time
import uuid

import torch
import torch.nn.functional as F
from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from swin_fused.cifar import checkpoint as ckpt
from swin_fused.cifar import data, distributed, models, plots, rundir
from swin_fused.cifar.errors import CliError

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
HISTORY_KEYS = ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_time",
                "images_per_s")


class SeedRecipe:
    """The seed article's: Adam(lr 1e-4, betas (0.5, 0.999)); ReduceLROnPlateau(factor 0.94,
    patience 1, min_lr 1e-6) on each epoch's train loss; plain cross-entropy."""
    name = "seed"
    label_smoothing = 0.0
    clip_norm = None

    def optimizer(self, model, global_batch):
        return torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.5, 0.999))

    def scheduler(self, optimizer, steps_per_epoch, epochs):
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.94, patience=1,
                                                          min_lr=1e-6)

    def step_done(self, scheduler):
        pass

    def epoch_done(self, scheduler, train_loss):
        scheduler.step(train_loss)


class SwinRecipe:
    """The Swin paper's ImageNet recipe (Liu et al. 2021, appendix A2.1) in the parts that apply
    to any dataset: AdamW(betas (0.9, 0.999)) at lr 1e-3 per 1024 images of global batch, weight
    decay 0.05 except on norms, biases and position-bias parameters; linear warmup from lr/1000
    over the first 20/300 of the steps, then cosine decay to lr/100, stepped every step; label
    smoothing 0.1; gradients clipped to norm 5."""
    name = "swin"
    label_smoothing = 0.1
    clip_norm = 5.0
    no_decay = ("relative_position", "cpb_mlp", "logit_scale")

    def optimizer(self, model, global_batch):
        decay, no_decay = [], []
        for name, parameter in model.named_parameters():
            plain = parameter.ndim <= 1 or any(word in name for word in self.no_decay)
            (no_decay if plain else decay).append(parameter)
        return torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                                  {"params": no_decay, "weight_decay": 0.0}],
                                 lr=1e-3 * global_batch / 1024, betas=(0.9, 0.999))

    def scheduler(self, optimizer, steps_per_epoch, epochs):
        total = epochs * steps_per_epoch
        warmup = max(1, round(total * 20 / 300))

        def factor(step):
            if step < warmup:
                return 1e-3 + (1 - 1e-3) * step / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 1e-2 + (1 - 1e-2) * 0.5 * (1 + math.cos(math.pi * progress))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def step_done(self, scheduler):
        scheduler.step()

    def epoch_done(self, scheduler, train_loss):
        pass


RECIPES = {recipe.name: recipe for recipe in (SeedRecipe(), SwinRecipe())}


def autocast(device, amp):
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def train_step(model, images, labels, optimizer, scaler, amp, recipe):
    """One optimisation step; returns the batch's loss (a detached tensor) and its logits."""
    with autocast(images.device, amp):
        logits = model(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=recipe.label_smoothing)
    optimizer.zero_grad()
    scaler.scale(loss).backward()
    if recipe.clip_norm:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_norm)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), logits.detach()


@dataclasses.dataclass
class TrainingRun:
    """Everything a checkpoint must hold for training to go on exactly where it stopped."""
    model: torch.nn.Module      # the model itself: sharded in place by FSDP, wrapped by DDP
    runner: torch.nn.Module     # what trains: the model, its DDP wrapper, compiled or not
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    recipe: object
    config: dict
    history: dict
    epoch: int = 0
    resumed_epoch: int = 0

    def checkpoint(self, processes):
        """The whole checkpoint on rank 0 (None elsewhere); every process must call it."""
        model_state, optimizer_state = processes.full_state(self.model, self.optimizer)
        rng = processes.gather(rng_state(processes.device))
        if not processes.is_main:
            return None
        return {"format": ckpt.FORMAT, "model": model_state, "optimizer": optimizer_state,
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": self.epoch, "history": self.history, "config": self.config,
                "rng": rng}


def rng_state(device):
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(states, processes, seed, epoch):
    """This process's saved RNG state when the world size is the one saved; else a fresh seed."""
    if isinstance(states, list) and len(states) == processes.world_size:
        torch.set_rng_state(states[processes.rank]["torch"])
        if "cuda" in states[processes.rank] and processes.device.type == "cuda":
            torch.cuda.set_rng_state(states[processes.rank]["cuda"], processes.device)
    else:
        torch.manual_seed(seed + processes.rank + 1_000_003 * epoch)


def requested_sizes(args):
    return {key: getattr(args, key) for key in models.SIZE_OPTIONS
            if getattr(args, key) is not None}


def training_options(args, processes, seed, recipe):
    return {"data_dir": os.path.abspath(args.data_dir), "epochs": args.epochs,
            "batch_size": args.batch_size, "amp": args.amp, "augment": args.augment,
            "fused": args.fused, "compile": args.compile, "fsdp": args.fsdp, "seed": seed,
            "recipe": recipe, "world_size": processes.world_size}


def new_config(args):
    name = args.model or models.DEFAULT
    image_size = args.image_size or models.default_image_size(name)
    return {"model": models.record(name, requested_sizes(args), image_size), "classes": None,
            "image_size": image_size, "run_id": uuid.uuid4().hex}


def resumed_config(args, resumed):
    """The resumed run's config; the model options, where given, must describe its model."""
    config = dict(resumed["config"])
    on_disk = {key: value for key, value in config["model"].items() if key != "n_classes"}
    asked = requested_sizes(args)
    if args.model:
        asked = models.record(args.model, asked, config["image_size"])
    mismatch = [key for key, value in asked.items() if on_disk.get(key) != value]
    if args.image_size and args.image_size != config["image_size"]:
        mismatch.append("image_size")
    if mismatch:
        raise CliError(f"{args.resume} holds {models.describe(config['model'])} at image size "
                       f"{config['image_size']}, not what the options ask ({', '.join(mismatch)}):"
                       " drop the model options to resume it")
    # a converted model is a fresh run from its weights; a format-1 run had no id
    if "optimizer" not in resumed or "run_id" not in config:
        config["run_id"] = uuid.uuid4().hex
    return config


def open_run(args, processes, guard):
    """Rank 0: the checkpoint to resume and the run's config, after making sure that RUN_DIR
    may take this run and locking it for as long as `guard` lasts."""
    resumed = ckpt.load(args.resume) if args.resume else None
    config = resumed_config(args, resumed) if resumed else new_config(args)
    trained = config.get("train", {})
    run_recipe = trained.get("recipe", "seed")  # format 1 knew the seed's recipe only
    if resumed and "optimizer" in resumed and args.recipe not in (None, run_recipe):
        raise CliError(f"{args.resume} was trained with --recipe {run_recipe}: resume it with "
                       "the same recipe")
    seed = args.seed if args.seed is not None else trained.get("seed", 0)
    recipe = args.recipe or (run_recipe if resumed else "seed")
    config["train"] = training_options(args, processes, seed, recipe)
    if resumed and resumed["epoch"] >= args.epochs:
        raise CliError(f"{args.resume} has already trained {resumed['epoch']} epochs: "
                       f"pass --epochs above {resumed['epoch']} to go on")
    prepare_run_dir(args.out)
    guard.enter_context(rundir.RunLock(args.out))
    if args.overwrite:
        rundir.check_overwrite_keeps(args.out, args.resume)
        rundir.remove_run(args.out)
    else:
        rundir.check_replaceable(args.out, args.resume, resumed)
    rundir.remove_temporary_files(args.out)
    return resumed, config


def prepare_run_dir(path):
    """Create RUN_DIR and prove it writable now, not after the first epoch."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise CliError(f"cannot write to the run directory {path}: "
                       f"{error.strerror or error}") from None


def load_datasets(args, config):
    image_size = config["image_size"]
    train_set = data.load_split(args.data_dir, True, data.train_transform(image_size,
                                                                          args.augment))
    test_set = data.load_split(args.data_dir, False, data.eval_transform(image_size))
    data.check_classes(test_set, train_set.classes, "the test split")
    if config["classes"] is not None:
        data.check_classes(train_set, config["classes"], args.data_dir)
    if args.augment:
        train_set = data.EpochSeeded(train_set, config["train"]["seed"])
    return train_set, test_set


def set_up(args, processes, guard):
    """The run, its loaders, and what was resumed, on every process; failures end every
    process with the failing one's message."""
    opened = processes.agree(open_run, args, processes, guard, on=processes.is_main)
    resumed, config = opened if processes.is_main else (None, None)
    config = processes.broadcast(config)
    datasets = None
    for local_first in (True, False):  # local rank 0 first: it downloads CIFAR-10 if needed
        loaded = processes.agree(load_datasets, args, config,
                                 on=(processes.local_rank == 0) == local_first)
        datasets = datasets or loaded
    train_set, test_set = datasets
    classes = processes.broadcast(list(train_set.classes))
    processes.agree(data.check_classes, train_set, classes, args.data_dir)
    if config["classes"] is None:
        config["classes"], config["model"]["n_classes"] = classes, len(classes)

    seed = config["train"]["seed"]
    loaders = (data.train_loader(train_set, args.batch_size, args.workers, seed, processes),
               data.eval_loader(test_set, args.batch_size, args.workers, processes))
    model = processes.agree(build_model, args, config, resumed)
    run = start_run(args, processes, config, model, resumed, len(loaders[0]))
    return run, loaders, len(train_set), len(test_set)


def build_model(args, config, resumed):
    """The model, with the resumed weights on rank 0 (the only process that has them)."""
    torch.manual_seed(config["train"]["seed"])  # the same initial weights on every process
    model = models.build(config["model"], args.fused)
    if resumed:
        ckpt.load_weights(model, resumed["model"], args.resume)
    return model


def start_run(args, processes, config, model, resumed, steps_per_epoch):
    """Rank 0's weights everywhere, wrapped for DDP or FSDP, with the optimizer, scheduler and
    scaler of the recipe, and the resumed run's state."""
    seed = config["train"]["seed"]
    model.to(processes.device)
    processes.copy_from_main(model)
    if processes.rank:
        torch.manual_seed(seed + processes.rank)  # dropout and stochastic depth differ by rank
    wrapped = processes.wrap(model, args.fsdp)
    recipe = RECIPES[config["train"]["recipe"]]
    optimizer = recipe.optimizer(model, args.batch_size)
    scaler_type = ShardedGradScaler if args.fsdp else torch.amp.GradScaler
    run = TrainingRun(model, torch.compile(wrapped) if args.compile else wrapped, optimizer,
                      recipe.scheduler(optimizer, steps_per_epoch, args.epochs),
                      scaler_type(processes.device.type, enabled=args.amp == "fp16"), recipe,
                      config, {key: [] for key in HISTORY_KEYS})
    has_state = processes.broadcast(bool(resumed) and "optimizer" in resumed)
    if has_state:  # a converted article model has weights only: it starts a fresh run
        restore(run, resumed, processes, model)
    return run


def restore(run, resumed, processes, model):
    """The optimizer, scheduler, scaler, epoch, history and RNG state of the resumed run."""
    optimizer_state = None
    if processes.is_main:
        optimizer_state = resumed["optimizer"]
        if resumed["format"] != ckpt.FORMAT:
            optimizer_state = ckpt.optimizer_by_name(optimizer_state, model)
    processes.load_optimizer(model, run.optimizer, optimizer_state)
    small = processes.broadcast({key: resumed[key] for key in
                                 ("scheduler", "scaler", "epoch", "history", "rng")}
                                if processes.is_main else None)
    run.scheduler.load_state_dict(small["scheduler"])
    # a run resumed with another --amp starts a fresh fp16 loss scale, or needs none
    if small["scaler"] and run.scaler.is_enabled():
        run.scaler.load_state_dict(small["scaler"])
    run.epoch = run.resumed_epoch = small["epoch"]
    run.history = small["history"]
    restore_rng(small["rng"], processes, run.config["train"]["seed"], run.epoch)


def train(args):
    processes = distributed.start(args.device)
    try:
        train_in(processes, args)
    finally:
        processes.close()


def train_in(processes, args):
    """The whole run; the model and what holds the process group are gone when it returns."""
    with contextlib.ExitStack() as guard:
        run, loaders, n_train, n_test = set_up(args, processes, guard)
        if processes.is_main:
            print_setup(run, args, processes, n_train, n_test)
        train_epochs(run, loaders, args, processes)


def print_setup(run, args, processes, n_train, n_test):
    n_params = sum(p.numel() for p in run.model.parameters())
    config = run.config
    if processes.distributed:
        parallel = (f"{processes.world_size} processes ({'FSDP2' if args.fsdp else 'DDP'}), "
                    f"global batch {args.batch_size} = {processes.world_size} x "
                    f"{args.batch_size // processes.world_size} per process")
    else:
        parallel = f"batch {args.batch_size}"
    print(f"model: {config['model']} ({n_params:,} parameters), "
          f"{'fused' if args.fused else 'eager'} attention, {processes.device}, amp {args.amp}, "
          f"recipe {run.recipe.name}; {parallel}; data: {n_train} train / {n_test} test images, "
          f"classes {config['classes']}", flush=True)


def train_epochs(run, loaders, args, processes):
    writer = None
    try:
        while run.epoch < args.epochs:
            train_one_epoch(run, loaders, args, processes)
            checkpoint = run.checkpoint(processes)
            if processes.is_main:
                # created at the first epoch logged: an interrupted first epoch leaves no events
                # purge_step drops the events of epochs a resumed run trains again
                writer = writer or SummaryWriter(
                    args.out, purge_step=run.epoch if run.resumed_epoch else None)
                log_epoch(writer, run.history, run.epoch)
                save_checkpoints(checkpoint, run.history, args.out)
                plots.save_history_plots(run.history, args.out)
    except KeyboardInterrupt:
        if processes.is_main:
            print(f"interrupted: {saved_state(args.out)}", file=sys.stderr)
        raise
    finally:
        if writer:
            writer.close()


def saved_state(run_dir):
    """What RUN_DIR holds now, read from the files themselves."""
    held = []
    for name in rundir.CHECKPOINTS:
        path = os.path.join(run_dir, name)
        if os.path.exists(path):
            try:
                held.append(f"{path} holds epoch {ckpt.peek(path)[1]}")
            except (OSError, RuntimeError, KeyError, ValueError, EOFError):
                held.append(f"{path} cannot be read")
    if not held:
        return f"nothing was saved in {run_dir}"
    last = os.path.join(run_dir, "last.pt")
    return "; ".join(held) + (f"; continue with --resume {last}" if os.path.exists(last) else "")


def run_epoch(run, loader, processes, amp, desc, training, valid=None):
    """One pass over this process's share of the data, training or testing: (loss, accuracy,
    images) over all processes. Only the first `valid` images count (the rest is padding)."""
    run.runner.train(training)
    total_loss, correct, seen = 0.0, 0, 0
    prefix = "Train" if training else "Test"
    bar = tqdm(loader, desc=desc, disable=not processes.is_main)
    with torch.set_grad_enabled(training):
        for images, labels in bar:
            images, labels = images.to(processes.device), labels.to(processes.device)
            if training:
                loss, logits = train_step(run.runner, images, labels, run.optimizer, run.scaler,
                                          amp, run.recipe)
                run.recipe.step_done(run.scheduler)
                count = len(labels)
            else:
                with autocast(processes.device, amp):
                    logits = run.runner(images)
                count = len(labels) if valid is None else min(len(labels), valid - seen)
                if count == 0:  # padding only: forwarded because every process must
                    continue
                logits, labels = logits[:count], labels[:count]
                loss = F.cross_entropy(logits.float(), labels)
            total_loss += loss.item() * count
            correct += (logits.argmax(1) == labels).sum().item()
            seen += count
            bar.set_postfix({f"{prefix} Acc": f"{correct / max(seen, 1):.3f}",
                             f"{prefix} Loss": f"{total_loss / max(seen, 1):.4g}"})
    total_loss, correct, seen = processes.sum(total_loss, correct, seen)
    return total_loss / seen, correct / seen, int(seen)


def train_one_epoch(run, loaders, args, processes):
    """Train and test one epoch, step the scheduler, record and print the epoch's numbers."""
    train_loader, test_loader = loaders
    data.set_epoch(train_loader, run.epoch)
    lr = run.optimizer.param_groups[0]["lr"]
    tag = f"Epoch {run.epoch + 1}/{args.epochs}"
    start = time.perf_counter()
    train_loss, train_acc, n_images = run_epoch(run, train_loader, processes, args.amp,
                                                f"Train {tag}", training=True)
    train_time = time.perf_counter() - start
    test_loss, test_acc, _ = run_epoch(run, test_loader, processes, args.amp, f"Test {tag}",
                                       training=False, valid=test_loader.sampler.valid)
    epoch_time = time.perf_counter() - start
    run.recipe.epoch_done(run.scheduler, train_loss)
    run.epoch += 1
    for key, value in zip(HISTORY_KEYS, (train_loss, train_acc, test_loss, test_acc, lr,
                                         epoch_time, n_images / train_time), strict=True):
        run.history[key].append(value)
    if processes.is_main:
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


def save_checkpoints(checkpoint, history, run_dir):
    """last.pt every epoch; best.pt when the test accuracy is the best so far."""
    ckpt.save(checkpoint, os.path.join(run_dir, "last.pt"))
    if history["test_acc"][-1] >= max(history["test_acc"]):
        ckpt.save(checkpoint, os.path.join(run_dir, "best.pt"))
