"""One torchrun process of the distributed CLI tests: `python -m swin_fused.cifar` with what the
tests need to see inside it.

- Every process other than rank 0 records each write, rename, removal or folder creation under
  --out and prints `WROTE <event> <path>` on stderr at exit: rank 0 alone must write RUN_DIR.
- FAIL_RANK=r FAIL_AT=setup makes rank r's dataset folder missing (a node without the data);
  FAIL_AT=step makes rank r run out of memory in its second training step.
"""
import atexit
import os
import sys

import torch

from swin_fused.cifar import cli, data
from swin_fused.cifar import train as train_module

RANK = int(os.environ["RANK"])
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def audit_writes(run_dir):
    run_dir = os.path.abspath(run_dir)
    writes = []

    def inside(path):
        return isinstance(path, (str, bytes, os.PathLike)) and \
            os.path.abspath(os.fsdecode(path)).startswith(run_dir)

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = any(c in (mode or "") for c in "wax+") or bool((flags or 0) & WRITE_FLAGS)
            if writing and inside(path):
                writes.append(f"{event} {path}")
        elif event in ("os.rename", "os.remove", "os.mkdir", "os.truncate") and inside(args[0]):
            writes.append(f"{event} {args[0]}")
    sys.addaudithook(hook)
    real_save = torch.save

    def save(obj, f, *args, **kwargs):  # a path torch.save opens in C++, unseen by the hook
        if inside(f):
            writes.append(f"torch.save {f}")
        return real_save(obj, f, *args, **kwargs)
    torch.save = save
    atexit.register(lambda: [print(f"WROTE {w}", file=sys.stderr) for w in writes])


def fail_at(where):
    if where == "setup":
        def missing(data_dir, train, transform):
            raise FileNotFoundError(2, "No such file or directory", data_dir)
        data.load_split = missing
    elif where == "step":
        real_step, steps = train_module.train_step, []

        def out_of_memory(*args):
            steps.append(1)
            if len(steps) == 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return real_step(*args)
        train_module.train_step = out_of_memory


if __name__ == "__main__":
    argv = sys.argv[1:]
    if RANK != 0:
        audit_writes(argv[argv.index("--out") + 1])
    if os.environ.get("FAIL_RANK") == str(RANK):
        fail_at(os.environ["FAIL_AT"])
    sys.exit(cli.main(argv))
