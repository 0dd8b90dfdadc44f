"""RUN_DIR of `train`: what a run leaves there, replacing a run only when asked, and the lock that
keeps a second concurrent run out.

A folder holds a run when it has any of RUN_FILES or a TensorBoard events file. `train` refuses
such a folder unless --resume continues that same run from its latest state, or --overwrite asks
to delete exactly those files first. The lock is an flock on RUN_DIR/train.lock: the kernel drops
it when its process ends, however it ends, so a crashed run never blocks the next one.
"""
import contextlib
import fcntl
import glob
import os
import pickle
import socket
import time

from swin_fused.cifar import checkpoint as ckpt
from swin_fused.cifar.errors import CliError, one_line

CHECKPOINTS = ("last.pt", "best.pt")
PLOTS = ("loss.png", "accuracy.png", "lr.png")
RUN_FILES = CHECKPOINTS + PLOTS
EVENTS = "events.out.tfevents.*"
# what checkpoint.save leaves when its process is killed mid-write
TEMPORARY = tuple(f".{name}.*.tmp" for name in CHECKPOINTS)
LOCK_NAME = "train.lock"


def run_files(run_dir):
    """The paths in run_dir that belong to a run: checkpoints, plots, TensorBoard events."""
    named = [os.path.join(run_dir, name) for name in RUN_FILES]
    return ([path for path in named if os.path.exists(path)]
            + sorted(glob.glob(os.path.join(glob.escape(run_dir), EVENTS))))


def check_replaceable(run_dir, resume_path, resumed):
    """Raise a CliError unless training into run_dir (without --overwrite) loses nothing."""
    present = run_files(run_dir)
    if not present:
        return
    names = ", ".join(os.path.basename(path) for path in present[:4])
    if resumed is None:
        raise CliError(f"{run_dir} holds a run ({names}): continue it with --resume "
                       f"{os.path.join(run_dir, 'last.pt')}, replace it with --overwrite, or "
                       "choose another --out")
    own_last = os.path.join(run_dir, "last.pt")
    if os.path.exists(own_last) and os.path.samefile(own_last, resume_path):
        return  # the folder's own latest state
    run_id, epoch = resumed["config"].get("run_id"), resumed["epoch"]
    checkpoints = [path for path in present if os.path.basename(path) in CHECKPOINTS]
    if not checkpoints:
        raise CliError(f"{run_dir} holds files of a run ({names}) but no checkpoint to tell "
                       "whether it is the run resumed: choose another --out, or pass --overwrite")
    for path in checkpoints:
        if os.path.samefile(path, resume_path):
            continue
        try:
            on_disk_id, on_disk_epoch = ckpt.peek(path)
        except (OSError, RuntimeError, EOFError, ValueError, KeyError, TypeError,
                pickle.UnpicklingError) as error:
            raise CliError(f"cannot read {path} to check that it belongs to the run resumed "
                           f"({one_line(error)}): move it away, or pass --overwrite") from None
        if run_id is None or on_disk_id != run_id:
            raise CliError(f"{run_dir} holds another run ({path}); resuming {resume_path} there "
                           "would replace it: choose another --out, or pass --overwrite")
        if os.path.basename(path) == "last.pt" and on_disk_epoch > epoch:
            raise CliError(f"{path} holds epoch {on_disk_epoch} of this run; resuming from epoch "
                           f"{epoch} ({resume_path}) would replace it: resume from {path}, choose "
                           "another --out, or pass --overwrite")


def check_overwrite_keeps(run_dir, resume_path):
    """--overwrite deletes the run files; the checkpoint being resumed must not be one of them."""
    if resume_path and any(os.path.samefile(path, resume_path) for path in run_files(run_dir)):
        raise CliError(f"--overwrite would delete {resume_path}, the checkpoint to resume: copy "
                       f"it out of {run_dir} first")


def remove_run(run_dir):
    """What --overwrite deletes: the run files, nothing else in run_dir."""
    for path in run_files(run_dir):
        os.remove(path)


def remove_temporary_files(run_dir):
    """Temporary checkpoints of a killed run; only called while holding the lock."""
    for pattern in TEMPORARY:
        for path in glob.glob(os.path.join(glob.escape(run_dir), pattern)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


class RunLock:
    """Held while a run trains into run_dir; a second RunLock on the folder raises a CliError."""

    def __init__(self, run_dir):
        self.run_dir, self.path, self.fd = run_dir, os.path.join(run_dir, LOCK_NAME), None

    def __enter__(self):
        while self.fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 512).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise CliError(f"{self.run_dir} is in use by another training run ({holder}): "
                               "wait for it to end or choose another --out; if no run uses it "
                               f"(a crashed machine on a network file system), delete "
                               f"{self.path}") from None
            if self._still_there(fd):
                self.fd = fd
            else:  # its holder removed the file between our open and our lock: start again
                os.close(fd)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        return self

    def _still_there(self, fd):
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def __exit__(self, *exc_info):
        os.remove(self.path)
        os.close(self.fd)
        self.fd = None
