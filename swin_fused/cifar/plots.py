"""PNG figures: training history curves and the seed's grid of sample predictions."""
import math
import os

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from swin_fused.cifar.data import unnormalize


def save_history_plots(history, run_dir):
    """loss.png, accuracy.png and lr.png in run_dir, one point per epoch."""
    epochs = range(1, len(history["train_loss"]) + 1)
    _plot_curves(os.path.join(run_dir, "loss.png"), "loss", epochs,
                 {"train": history["train_loss"], "test": history["test_loss"]})
    _plot_curves(os.path.join(run_dir, "accuracy.png"), "accuracy", epochs,
                 {"train": history["train_acc"], "test": history["test_acc"]})
    _plot_curves(os.path.join(run_dir, "lr.png"), "learning rate", epochs,
                 {"learning rate": history["lr"]})


def _plot_curves(path, ylabel, epochs, curves):
    # a bare Figure, not pyplot: no GUI backend and no global figure state
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    for label, values in curves.items():
        axes.plot(epochs, values, marker="o", label=label)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def save_prediction_grid(images, labels, predictions, classes, path, columns=8):
    """Each image titled "predicted (true)", green where right and red where wrong."""
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    figure = Figure(figsize=(2 * columns, 2.2 * rows))
    for i, (image, label, predicted) in enumerate(zip(images, labels, predictions, strict=True)):
        axes = figure.add_subplot(rows, columns, i + 1, xticks=[], yticks=[])
        axes.imshow(unnormalize(image).permute(1, 2, 0).numpy())
        axes.set_title(f"{classes[predicted]} ({classes[label]})", fontsize=9,
                       color="green" if predicted == label else "red")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
