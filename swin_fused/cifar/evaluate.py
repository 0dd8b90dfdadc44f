"""`eval`: overall and per-class test accuracy, and a PNG grid of sample predictions."""
import os

import torch
from tqdm import tqdm

from swin_fused.cifar import checkpoint as ckpt
from swin_fused.cifar import data, plots

GRID_IMAGES = 64


def evaluate(args):
    device = args.device
    model, config = ckpt.load_for_inference(args.checkpoint, device, args.fused)
    test_set = data.load_split(args.data_dir, False, data.eval_transform(config["image_size"]))
    data.check_classes(test_set, config["classes"], f"the test split of {args.data_dir}")
    loader = data.loader(test_set, args.batch_size, args.workers)
    predictions, labels = predict_all(model, loader, device)

    print(accuracy_table(predictions, labels, config["classes"]))
    out_dir = args.out or os.path.dirname(os.path.abspath(args.checkpoint))
    os.makedirs(out_dir, exist_ok=True)
    grid_path = os.path.join(out_dir, "predictions.png")
    shown = min(GRID_IMAGES, len(test_set))
    images = torch.stack([test_set[i][0] for i in range(shown)])
    plots.save_prediction_grid(images, labels[:shown].tolist(), predictions[:shown].tolist(),
                               config["classes"], grid_path)
    print(f"sample predictions: {grid_path}")


@torch.no_grad()
def predict_all(model, loader, device):
    """(predicted classes, true labels) over the whole loader, on the CPU."""
    predictions, labels = [], []
    for images, batch_labels in tqdm(loader, desc="Eval"):
        predictions.append(model(images.to(device)).argmax(1).cpu())
        labels.append(batch_labels)
    return torch.cat(predictions), torch.cat(labels)


def accuracy_table(predictions, labels, classes):
    n = len(classes)
    correct = torch.bincount(labels[predictions == labels], minlength=n)
    total = torch.bincount(labels, minlength=n)
    width = max(len("overall"), *(len(name) for name in classes))
    rows = [f"{'class':<{width}}  accuracy  correct / total"]
    for name, right, count in [*zip(classes, correct.tolist(), total.tolist(), strict=True),
                               ("overall", int(correct.sum()), len(labels))]:
        accuracy = f"{100 * right / count:7.2f}%" if count else "       -"
        rows.append(f"{name:<{width}}  {accuracy}  {right:>7} / {count}")
    return "\n".join(rows)
