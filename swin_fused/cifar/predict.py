"""`predict`: the top classes, with probabilities, for image files and http(s) URLs."""
import io
import urllib.error
import urllib.request

import torch

from swin_fused.cifar import checkpoint as ckpt
from swin_fused.cifar import data
from swin_fused.cifar.errors import CliError

MAX_DOWNLOAD_BYTES = 20 * 2**20
BATCH_SIZE = 64


def predict(args):
    device = args.device
    model, config = ckpt.load_for_inference(args.checkpoint, device, args.fused)
    # read every image before the model runs, so one bad input fails fast
    images = [open_image(source, args.timeout) for source in args.images]
    transform = data.eval_transform(config["image_size"])
    batch = torch.stack([transform(image) for image in images])
    with torch.no_grad():
        probabilities = torch.cat([model(chunk.to(device)).softmax(1).cpu()
                                   for chunk in batch.split(BATCH_SIZE)])
    top = probabilities.topk(min(args.top, len(config["classes"])), dim=1)
    for source, values, indices in zip(args.images, top.values, top.indices, strict=True):
        ranked = ", ".join(f"{config['classes'][i]} {p:.1%}"
                           for p, i in zip(values.tolist(), indices.tolist(), strict=True))
        print(f"{source}: {ranked}")


def open_image(source, timeout):
    """An RGB PIL image from a path or an http(s) URL."""
    if source.startswith(("http://", "https://")):
        return data.read_rgb(io.BytesIO(fetch(source, timeout)), source)
    return data.read_rgb(source)


def fetch(url, timeout):
    """The bytes at url, with a timeout and a size limit."""
    request = urllib.request.Request(url, headers={"User-Agent": "swin_fused.cifar"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            content = response.read(MAX_DOWNLOAD_BYTES + 1)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", None) or error
        raise CliError(f"cannot fetch {url}: {reason} (offline? download the image and pass "
                       "its path instead)") from None
    if len(content) > MAX_DOWNLOAD_BYTES:
        raise CliError(f"{url} is over the {MAX_DOWNLOAD_BYTES // 2**20} MiB limit for images")
    return content
