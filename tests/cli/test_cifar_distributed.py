"""`torchrun -m swin_fused.cifar train` (issue 14) on CPU with gloo: processes train as one.

12 training and 6 test images divide evenly over 1, 2 and 3 processes, so with a global batch of
6 every process count sees the same global batches in the same order (and, with --augment, the
same crops and flips): DDP on 2 processes, and FSDP2 on 3 resuming the 2-process checkpoint, must
give the parameters, optimizer state and history of one process, up to float rounding. Rank 0
alone writes RUN_DIR; a failing rank ends the job with its one-line message; Ctrl-C ends every
process and leaves the last checkpoint readable. The model is tiny and eager (--no-fused): the
fused op under DDP and FSDP2 is tested with the op itself.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from swin_fused.cifar import checkpoint as ckpt
from swin_fused.cifar.cli import PROG
from tests.cli.cifar_tools import CLASSES, RTOL, make_image_folder, run_cli, run_main, usage_error
from tests.helpers import ROOT, assert_close

pytestmark = pytest.mark.cli

WORKER = Path(__file__).with_name("cifar_torchrun_worker.py")
OPTIONS = ["--embed-dim", "16", "--depths", "2", "--heads", "2", "--window-size", "4",
           "--image-size", "8", "--batch-size", "6", "--workers", "0", "--device", "cpu",
           "--no-fused", "--augment", "--seed", "3"]


def torchrun(n_processes, *argv, env=None, timeout=240):
    """The CLI under torchrun on this machine: the finished CompletedProcess."""
    return subprocess.run(torchrun_command(n_processes, *argv), capture_output=True, text=True,
                          timeout=timeout, env=worker_env(env))


def worker_env(extra=None):
    """This environment with the checkout first on PYTHONPATH: a worker runs as a script, which
    puts tests/ on its path, not the folder pytest runs in, and must import the code under test
    whether or not it is installed."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **(extra or {})}


def torchrun_command(n_processes, *argv):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(n_processes), str(WORKER), *[str(a) for a in argv]]


def train_argv(data_dir, run_dir, epochs, *extra):
    return ["train", "--data-dir", data_dir, "--out", run_dir, "--epochs", epochs, *OPTIONS,
            *extra]


def assert_job_ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    assert "WROTE" not in result.stderr, "a process other than rank 0 wrote into RUN_DIR"


def assert_same_run(actual, expected):
    """Two checkpoints of the same epoch: weights, optimizer state and history agree."""
    assert actual["epoch"] == expected["epoch"]
    for name, value in expected["model"].items():
        assert_close(actual["model"][name], value, RTOL, name=name)
    for name, state in expected["optimizer"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert_close(actual["optimizer"]["state"][name][key], state[key], RTOL,
                         name=f"{name} {key}")
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
        assert actual["history"][key] == pytest.approx(expected["history"][key], rel=RTOL), key
    assert actual["scheduler"].keys() == expected["scheduler"].keys()
    for key, value in expected["scheduler"].items():  # 'best' is a test loss: float rounding
        assert actual["scheduler"][key] == approx_if_float(value), key


def approx_if_float(value):
    """pytest.approx(value, rel=RTOL) for a float or a list of floats, else value itself."""
    floats = value if isinstance(value, list) else [value]
    return pytest.approx(value, rel=RTOL) if all(type(v) is float for v in floats) else value


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data"), size=8)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, data_dir):
    """One process, without torchrun: {epoch: checkpoint} after epochs 2, 3 and 4."""
    run_dir, checkpoints = tmp_path_factory.mktemp("one"), {}
    for epochs in (2, 3, 4):
        resume = ["--resume", run_dir / "last.pt"] if checkpoints else []
        assert run_main(*train_argv(data_dir, run_dir, epochs, *resume)) == 0
        checkpoints[epochs] = torch.load(run_dir / "last.pt", weights_only=True)
    return checkpoints


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, data_dir):
    """DDP on 2 processes, 2 epochs: (RUN_DIR, the job's result)."""
    run_dir = tmp_path_factory.mktemp("two")
    return run_dir, torchrun(2, *train_argv(data_dir, run_dir, 2))


def test_two_processes_train_as_one(two_processes, one_process):
    run_dir, result = two_processes
    assert_job_ok(result)
    assert "2 processes (DDP), global batch 6 = 2 x 3 per process" in result.stdout
    assert result.stdout.count("Epoch [") == 2, "only rank 0 prints the epochs"
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    others = [name for name in os.listdir(run_dir) if not name.startswith("events.")]
    assert sorted(others) == ["accuracy.png", "best.pt", "last.pt", "loss.png", "lr.png"]
    checkpoint = ckpt.load(run_dir / "last.pt")
    assert checkpoint["config"]["train"]["world_size"] == 2
    assert_same_run(checkpoint, one_process[2])


def test_resume_two_processes_on_one(capsys, two_processes, one_process, data_dir, tmp_path):
    run_dir, _ = two_processes
    status, _, err = run_cli(capsys, *train_argv(data_dir, tmp_path, 3, "--resume",
                                                 run_dir / "last.pt"))
    assert status == 0, err
    assert_same_run(torch.load(tmp_path / "last.pt", weights_only=True), one_process[3])


@pytest.mark.slow
def test_fsdp_on_three_resumes_two_and_one_process_resumes_it(capsys, two_processes,
                                                             one_process, data_dir, tmp_path):
    run_dir, _ = two_processes
    three = tmp_path / "three"
    result = torchrun(3, *train_argv(data_dir, three, 3, "--fsdp", "--resume",
                                     run_dir / "last.pt"))
    assert_job_ok(result)
    assert "3 processes (FSDP2)" in result.stdout
    assert_same_run(ckpt.load(three / "last.pt"), one_process[3])

    # the FSDP checkpoint is whole: one process evaluates, predicts with and resumes it
    status, out, err = run_cli(capsys, "eval", "--data-dir", data_dir, "--checkpoint",
                               three / "last.pt", "--workers", "0", "--device", "cpu",
                               "--no-fused")
    assert status == 0 and "overall" in out, err
    status, out, err = run_cli(capsys, "predict", "--checkpoint", three / "last.pt",
                               next((data_dir / "test" / CLASSES[0]).iterdir()), "--device",
                               "cpu", "--no-fused")
    assert status == 0 and out.count("%") == 3, err
    status, _, err = run_cli(capsys, *train_argv(data_dir, three, 4, "--resume",
                                                 three / "last.pt"))
    assert status == 0, err
    assert_same_run(torch.load(three / "last.pt", weights_only=True), one_process[4])


@pytest.mark.parametrize("where, message", [("setup", "No such file"),
                                            ("step", "out of memory")])
def test_a_failing_rank_ends_the_job_with_its_message(data_dir, tmp_path, where, message):
    start = time.monotonic()
    result = torchrun(2, *train_argv(data_dir, tmp_path / "run", 3),
                      env={"FAIL_RANK": "1", "FAIL_AT": where}, timeout=120)
    assert result.returncode != 0
    assert time.monotonic() - start < 100, "the job should end as soon as a rank fails"
    errors = [line[line.index(PROG):] for line in result.stderr.splitlines() if PROG in line]
    assert errors and errors[0].startswith(f"{PROG}: error: rank 1: ") and message in errors[0], \
        result.stderr[-3000:]
    assert "[rank0]" not in result.stderr and "[rank1]" not in result.stderr, \
        "a process ended with a traceback"


def test_ctrl_c_ends_every_process_and_keeps_the_last_checkpoint(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    job = subprocess.Popen(torchrun_command(2, *train_argv(data_dir, run_dir, 1000)),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=worker_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not (run_dir / "last.pt").exists() and job.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint within 3 minutes"
            time.sleep(0.2)
        os.killpg(job.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        _, stderr = job.communicate(timeout=90)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    assert job.returncode != 0
    assert f"interrupted: {run_dir / 'last.pt'} holds epoch" in stderr, stderr[-3000:]
    assert "[rank0]" not in stderr and "[rank1]" not in stderr
    assert ckpt.load(run_dir / "last.pt")["epoch"] >= 1
    assert not [name for name in os.listdir(run_dir) if name.endswith(".tmp")]


@pytest.fixture
def under_torchrun(monkeypatch):
    """The environment torchrun gives rank `rank` of 2 processes (no process group is made)."""
    def enter(rank):
        for name, value in (("RANK", rank), ("LOCAL_RANK", rank), ("WORLD_SIZE", 2)):
            monkeypatch.setenv(name, str(value))
    return enter


@pytest.mark.parametrize("argv, message", [
    (["train", "--batch-size", "5"], "divide evenly over the 2 processes"),
    (["eval", "--checkpoint", "x.pt"], "runs in one process"),
], ids=["odd-batch", "eval"])
def test_usage_errors_under_torchrun_come_from_rank_0_only(capsys, data_dir, tmp_path,
                                                           under_torchrun, argv, message):
    argv = [*argv, "--data-dir", data_dir] + (["--out", tmp_path] if argv[0] == "train" else [])
    under_torchrun(0)
    assert message in usage_error(capsys, *argv)
    under_torchrun(1)
    with pytest.raises(SystemExit) as stop:
        run_main(*argv)
    assert stop.value.code == 2 and capsys.readouterr().err == ""


def test_fsdp_needs_torchrun(capsys, data_dir, tmp_path):
    assert "needs torchrun" in usage_error(capsys, "train", "--data-dir", data_dir, "--out",
                                           tmp_path, "--fsdp")
