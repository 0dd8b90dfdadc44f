"""Datasets and transforms: CIFAR-10 through torchvision, or an image-folder layout.

An image-folder dataset is DIR/train/<class>/*.png and DIR/test/<class>/*.png; otherwise DIR holds
(or receives, when the network allows) torchvision's DIR/cifar-10-batches-py.

The order of the training images is a function of the seed and the epoch alone
(DistributedSampler), and so is each image's augmentation (EpochSeeded): a run sees the same
batches, cropped and flipped the same way, whatever the number of processes, data-loader workers
or interruptions.
"""
import math
import os
import pickle
import warnings

import torch
from PIL import Image, UnidentifiedImageError
from torchvision import datasets, transforms

from swin_fused.cifar.errors import CliError, one_line

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_HELP = ("download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
              "and extract it into {dir}, or lay out images as {dir}/train/<class>/*.png and "
              "{dir}/test/<class>/*.png")
# the seed article's normalisation: pixels to [-1, 1]
NORMALIZE = transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def eval_transform(image_size):
    """PIL image -> normalised (3, size, size) tensor, as for the test set and predict."""
    return transforms.Compose([transforms.Resize((image_size, image_size)),
                               transforms.ToTensor(), NORMALIZE])


def train_transform(image_size, augment):
    if not augment:
        return eval_transform(image_size)
    return transforms.Compose([
        transforms.Resize((image_size, image_size)),
        transforms.RandomCrop(image_size, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), NORMALIZE])


def unnormalize(images):
    """Inverse of NORMALIZE, for showing images: (B, 3, H, W) in [-1, 1] -> [0, 1]."""
    return (images * 0.5 + 0.5).clamp(0, 1)


def read_rgb(source, name=None):
    """An RGB PIL image from a path or a binary stream, or a CliError naming the bad file."""
    name = name or source
    try:
        with warnings.catch_warnings():
            # an image of more than Image.MAX_IMAGE_PIXELS is refused, not decoded into memory
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                return image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise CliError(f"{name} is too large to decode safely: {error}") from None
    except UnidentifiedImageError:
        raise CliError(f"{name} is not an image PIL can read") from None
    except OSError as error:
        raise CliError(f"cannot read the image {name}: {error.strerror or error}") from None


def load_split(data_dir, train, transform):
    """The train or test split of the dataset in data_dir; its `.classes` names the labels."""
    folders = [os.path.isdir(os.path.join(data_dir, split)) for split in ("train", "test")]
    if all(folders):
        return _image_folder(data_dir, "train" if train else "test", transform)
    if any(folders):
        raise CliError(f"{data_dir} has only one of train/ and test/: an image-folder dataset "
                       "needs both")
    return _cifar10(data_dir, train, transform)


def _image_folder(data_dir, split, transform):
    root = os.path.join(data_dir, split)
    try:
        return datasets.ImageFolder(root, transform=transform, loader=read_rgb)
    except FileNotFoundError as error:
        raise CliError(f"{root}: {error}; expected {root}/<class>/*.png") from None


def _cifar10(data_dir, train, transform):
    download = not os.path.isdir(os.path.join(data_dir, CIFAR_FOLDER))
    if download:
        print(f"CIFAR-10 not found in {data_dir}: downloading it", flush=True)
    try:
        return datasets.CIFAR10(data_dir, train=train, transform=transform, download=download)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError, ValueError, KeyError) as error:
        what = "could not be downloaded" if download else "is incomplete or corrupt"
        raise CliError(f"CIFAR-10 in {os.path.join(data_dir, CIFAR_FOLDER)} {what} "
                       f"({one_line(error)}): "
                       + CIFAR_HELP.format(dir=data_dir)) from None


def check_classes(dataset, classes, where):
    """Fail when a dataset's class names differ from the ones a model was trained on."""
    if list(dataset.classes) != list(classes):
        raise CliError(f"{where} has classes {list(dataset.classes)} but the model was trained on "
                       f"{list(classes)}")


def loader(dataset, batch_size, workers, sampler=None):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                       num_workers=workers)


class EpochSeeded(torch.utils.data.Dataset):
    """`dataset` whose random augmentation of image i in epoch e is seeded by (seed, e, i) alone."""

    def __init__(self, dataset, seed):
        self.dataset, self.seed, self.epoch = dataset, seed, 0
        self.classes = dataset.classes

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: the transforms draw from it, the model's dropout may not
            torch.default_generator.manual_seed(
                ((self.seed * 1_000_003 + self.epoch) * 1_000_003 + index) % 2**63)
            return self.dataset[index]


def train_loader(dataset, batch_size, workers, seed, processes):
    """This process's share of each global batch of `batch_size` images, reshuffled per epoch by
    set_epoch: batch b of rank r holds images b*B + r, b*B + r + W, ... of the epoch's order."""
    sampler = torch.utils.data.DistributedSampler(
        dataset, num_replicas=processes.world_size, rank=processes.rank, shuffle=True, seed=seed)
    return loader(dataset, batch_size // processes.world_size, workers, sampler)


def set_epoch(train_loader, epoch):
    """Order and augmentation of epoch `epoch` (0-based)."""
    train_loader.sampler.set_epoch(epoch)
    if isinstance(train_loader.dataset, EpochSeeded):
        train_loader.dataset.epoch = epoch


class EvalShard(torch.utils.data.Sampler):
    """Images rank, rank + W, ... padded by repeats to the same count on every rank (so that
    every rank runs the same number of forwards, which FSDP needs); `valid` of them count."""

    def __init__(self, size, rank, world_size):
        self.indices = list(range(rank, size, world_size))
        self.valid = len(self.indices)
        padding = math.ceil(size / world_size) - self.valid
        self.indices += [self.indices[-1] if self.indices else 0] * padding

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def eval_loader(dataset, batch_size, workers, processes):
    sampler = EvalShard(len(dataset), processes.rank, processes.world_size)
    return loader(dataset, batch_size // processes.world_size, workers, sampler)
