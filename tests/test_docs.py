"""README.md and docs/*.md work as written.

- Every fenced shell command (```bash) is parsed. `test_command_is_valid` checks, for every one of
  them, what can be checked without a GPU or the network: a `python -m X` command's subcommand,
  options and choices against X's own `--help` (gathered in one subprocess), a `pytest` command's
  options, paths and markers, `gpu_check.sh`'s stage names, each environment variable, the
  extras of `pip install -e`. `test_command_runs` runs the cheap commands (RUN; `python -m X
  --help` runs in that one subprocess, through runpy as `python -m` does; the example as RUN_SLOW,
  marked slow) and skips every other by the first rule of SKIP that matches it, with that rule's
  reason (`pytest -rs` lists them); a command no rule covers fails, so nothing is left out
  silently.
- The Python examples compile, and the names they take from swin_fused exist (keyword arguments
  included).
- Every relative link resolves, anchors included.
- The README's results table is what the committed results say (the rows are recomputed here).
"""
import ast
import functools
import glob
import inspect
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
BIN = Path(sys.executable).parent  # the venv's python, pytest, ruff, torchrun

# commands run as written: (pattern, what the output must hold)
RUN = [
    (r"python -m [\w.]+( \w+)? --help", "usage:"),
    (r"python benchmarks/summarize\.py --help", "usage:"),
    (r"pytest benchmarks --benchmark-only --collect-only -q", "collected"),
    (r"ruff check \.", ""),
]
# commands run as written, but marked slow (pytest -m "not slow" leaves them out)
RUN_SLOW = [
    (r"python docs/example\.py", r"\d+ blocks fused on \w+; largest difference from eager: "),
]
# every other command: not run here, for the first reason whose pattern matches (re.search)
SKIP = [
    (r"^pip install", "needs the network (the package index)"),
    (r"^torchrun ", "starts several processes on several GPUs or machines, and needs data"),
    (r"gpu_check\.sh", "needs a CUDA GPU (the GPU check)"),
    (r"^tensorboard ", "starts a server"),
    (r"swin_fused\.cifar train ", "needs CIFAR-10 in ./data (downloaded: the network) and minutes"),
    (r"swin_fused\.cifar (eval|predict) ",
     "needs a trained checkpoint (and predict a URL: the network)"),
    (r"swin_fused\.cifar convert ", "needs the seed article's saved model"),
    (r"benchmarks\.profile_step tiny_swin",
     "slow in Triton's interpreter; tests/test_profile_step.py runs it"),
    (r"benchmarks\.profile_step ", "needs a CUDA GPU (a batch-128 Swin-T step)"),
    (r"benchmarks\.compile_check ", "compiles every kernel for sm_90: minutes"),
    (r"benchmarks/summarize\.py A/", "A/ and B/ stand for two results folders"),
    (r"pytest benchmarks --benchmark-only",
     "the benchmarks: timing needs a GPU; CI runs the CPU cases"),
    (r"(^|\s)pytest( |$)",
     "runs tests: minutes (CI runs the suite; pytest tests/test_docs.py is this file)"),
]
# environment variables documented but not the project's own
EXTERNAL_ENV = {"PYTHONPATH", "OMP_NUM_THREADS", "ATEN_CPU_CAPABILITY", "OPENBLAS_CORETYPE",
                "CUDA_VISIBLE_DEVICES"}
# the folders a path argument may start with to be checked as a path of this repository
REPO_DIRS = ("tests", "benchmarks", "swin_fused", "kernels", "docs", ".ci")


# ---- reading the pages -------------------------------------------------------------------------

def fences(page):
    """(language, first line number, text) of every fenced block of a page."""
    blocks, lang, start, body = [], None, 0, []
    for n, line in enumerate(page.read_text().splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, start, body = line[3:].strip() or "text", n + 1, []
            else:
                blocks.append((lang, start, "\n".join(body)))
                lang = None
        elif lang is not None:
            body.append(line)
    assert lang is None, f"{page.name}: a fence opened at line {start - 1} is never closed"
    return blocks


def shell_commands():
    """[(id, command text, tokens)] of every command in a ```bash fence, continuation lines
    joined, comments dropped, split at && || ; |."""
    commands = []
    for page in PAGES:
        for lang, start, text in fences(page):
            if lang not in ("bash", "sh", "shell"):
                continue
            lines, n = text.split("\n"), 0
            while n < len(lines):
                first, line = n, lines[n]
                while line.endswith("\\"):
                    n += 1
                    line = line[:-1] + " " + lines[n].strip()
                n += 1
                tokens = shlex.split(line, comments=True)
                current = []
                for token in tokens + ["&&"]:
                    if token in ("&&", "||", ";", "|"):
                        if current:
                            where = f"{page.relative_to(ROOT)}:{start + first}"
                            commands.append((where, shlex.join(current), current))
                        current = []
                    else:
                        current.append(token)
    return commands


def python_blocks():
    return [(f"{page.relative_to(ROOT)}:{start}", text) for page in PAGES
            for lang, start, text in fences(page) if lang == "python"]


COMMANDS = shell_commands()


# ---- --help texts ------------------------------------------------------------------------------

HELP_SCRIPT = r"""
import contextlib, io, json, runpy, sys
out = {}
for target, args in json.loads(sys.argv[1]):
    sys.argv = [target, *args, "--help"]
    text = io.StringIO()
    try:
        with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
            if target.endswith(".py"):
                runpy.run_path(target, run_name="__main__")
            else:
                runpy.run_module(target, run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    except Exception as e:
        text.write(f"\nraised {type(e).__name__}: {e}")
    out[" ".join([target, *args])] = text.getvalue()
print(json.dumps(out))
"""


def python_targets(commands):
    """{module or script: set of subcommands used} of the python -m / python X.py commands."""
    targets = {}
    for _, _, tokens in commands:
        call = python_call(tokens)
        if call:
            target, args = call
            targets.setdefault(target, set()).update(args[:1])
    return targets


@functools.cache
def helps():
    """{"module [subcommand]": its --help text}, for every module and script the commands run
    that uses argparse, from one subprocess (importing torch once)."""
    wanted = []
    for target, first_args in python_targets(COMMANDS).items():
        if not uses_argparse(target):
            continue
        wanted.append((target, []))
        wanted += [(target, [arg]) for arg in sorted(first_args) if re.fullmatch(r"[a-z]+", arg)]
    done = subprocess.run([sys.executable, "-c", HELP_SCRIPT, json.dumps(wanted)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@functools.cache
def program_help(program):
    done = subprocess.run([program_path(program), "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"{program} --help failed: {done.stderr[-2000:]}"
    return done.stdout


def program_path(program):
    return shutil.which(program, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}") or program


def uses_argparse(target):
    """Whether the module (a package: any of its files) or script parses its arguments with
    argparse; only those are asked for --help (another could start its work instead)."""
    path = ROOT / target if target.endswith(".py") else module_file(target)
    if path is None:
        return False
    files = path.parent.glob("*.py") if path.name == "__main__.py" else [path]
    return any("argparse" in f.read_text() for f in files)


def module_file(module):
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__main__.py"):
        if path.exists():
            return path
    return None


def option_specs(help_text):
    """{option: (takes a value, choices or None)} from an argparse-style help's option lines."""
    specs = {}
    for line in help_text.splitlines():
        match = re.match(r"^  (-\S.*?)(?:\s{2,}|$)", line)
        if not match:
            continue
        for part in match[1].split(", "):
            name = re.match(r"-{1,2}[\w-]+", part)
            if not name:
                continue
            rest = part[name.end():]
            choices = re.match(r"[ =]\{([^}]*)\}", rest)
            specs[name[0]] = (bool(rest.strip(" =")), choices[1].split(",") if choices else None)
    return specs


def subcommands(help_text):
    """The {a,b,c} subcommands of an argparse usage line, or None."""
    usage = help_text.split("\n\n")[0]
    match = re.search(r"\{([\w,-]+)\} \.\.\.", usage)
    return match[1].split(",") if match else None


def check_option(args, n, specs, what):
    """Checks the option args[n] (and its value) against `specs`; returns the index after it."""
    name, _, attached = args[n].partition("=")
    n += 1
    if name not in specs and not name.startswith("--") and name[:2] in specs:
        name, attached = name[:2], name[2:]  # -rs: -r with the value s
    assert name in specs, f"{what} has no option {name}"
    takes_value, choices = specs[name]
    if takes_value and not attached:
        assert n < len(args), f"{what}: {name} needs a value"
        attached = args[n]
        n += 1
        while n < len(args) and re.fullmatch(r"\d+", attached) and re.fullmatch(r"\d+", args[n]):
            n += 1  # nargs="+" of numbers: --depths 2 6 2
    if choices is not None:
        assert attached in choices, f"{what}: {name} {attached} is not one of {choices}"
    return n


def check_options(args, specs, what):
    """Every option of `args` is in `specs`, each choice value one of its choices; returns the
    positional arguments."""
    positionals, n = [], 0
    while n < len(args):
        if args[n].startswith("-") and not re.fullmatch(r"-\d.*", args[n]):
            n = check_option(args, n, specs, what)
        else:
            positionals.append(args[n])
            n += 1
    return positionals


# ---- checking a command ------------------------------------------------------------------------

def split_env(tokens):
    env, n = {}, 0
    while n < len(tokens) and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", tokens[n]):
        name, _, value = tokens[n].partition("=")
        env[name] = value
        n += 1
    return env, tokens[n:]


def python_call(tokens):
    """(module or script, its arguments) of `python -m X ...`, `python X.py ...` or `torchrun
    ... -m X ...`, or None."""
    _, tokens = split_env(tokens)
    if len(tokens) > 1 and tokens[0] == "python":
        if tokens[1] == "-m":
            return tokens[2], tokens[3:]
        if tokens[1].endswith(".py"):
            return tokens[1], tokens[2:]
    if tokens and tokens[0] == "torchrun":
        script = torchrun_script(tokens[1:], check=False)
        if script:
            return script
    return None


def torchrun_script(args, check=True):
    """(module or script, its arguments) that torchrun launches; with `check`, torchrun's own
    options are checked against its --help."""
    specs = option_specs(program_help("torchrun"))
    n = 0
    while n < len(args):
        if not args[n].startswith("-"):
            return args[n], args[n + 1:]
        if check:
            n = check_option(args, n, specs, "torchrun")
        else:
            n += 2 if specs.get(args[n], (False,))[0] else 1
    return None


@functools.cache
def source_text():
    """Every Python and shell file of the project, to find the environment variables it reads."""
    files = [p for d in ("swin_fused", "kernels", "benchmarks", "tests")
             for p in (ROOT / d).rglob("*")
             if p.suffix in (".py", ".sh") and p.resolve() != Path(__file__).resolve()]
    return "\n".join(p.read_text() for p in files)


def check_env(env):
    for name in env:
        if name in EXTERNAL_ENV:
            continue
        assert re.search(rf"\b{name}\b", source_text()), \
            f"environment variable {name} is read nowhere in the project"


def check_repo_path(arg):
    """An argument that names a path of this repository exists (globs and ::nodes allowed)."""
    path = arg.split("::")[0]
    if path.split("/")[0] in REPO_DIRS or path.startswith("benchmarks/results"):
        assert glob.glob(str(ROOT / path)), f"{path} does not exist"


def check_python(target, args):
    if target.endswith(".py"):
        assert (ROOT / target).exists(), f"{target} does not exist"
    else:
        assert module_file(target), f"no module {target} in this repository"
    for arg in args:
        check_repo_path(arg)
    if not uses_argparse(target):
        assert not args, f"{target} takes no arguments (it has no argparse), got {args}"
        return
    text = helps()[target]
    assert "usage:" in text, f"{target} --help printed no usage:\n{text[-2000:]}"
    if args == ["--help"]:
        return
    subs = subcommands(text)
    if subs:
        assert args and args[0] in subs, f"{target}: {args[:1]} is not one of {subs}"
        if args[1:] == ["--help"]:
            return
        text, args = helps()[f"{target} {args[0]}"], args[1:]
    positionals = check_options(args, option_specs(text), target)
    if target == "benchmarks.profile_step":
        from benchmarks.common import MODELS
        from benchmarks.test_models import model_impls
        model, impl = positionals[:2]
        assert model in MODELS, f"profile_step: no model {model} in benchmarks/common.py MODELS"
        assert impl in model_impls(model), f"profile_step: {model} has no impl {impl}"


def declared_markers():
    return {m.split(":")[0].strip() for m in PYPROJECT["tool"]["pytest"]["ini_options"]["markers"]}


def check_pytest(args):
    """Options against pytest --help, paths exist, -m names declared markers, every word of -k
    occurs in the test files it would select from."""
    specs = option_specs(program_help("pytest"))
    testpaths = PYPROJECT["tool"]["pytest"]["ini_options"]["testpaths"]
    paths = [a.split("::")[0] for a in args
             if not a.startswith("-") and (ROOT / a.split("::")[0]).exists()]
    n = 0
    while n < len(args):
        arg = args[n]
        if arg in ("-m", "-k"):
            words = set(re.findall(r"[\w-]+", args[n + 1])) - {"and", "or", "not"}
            if arg == "-m":
                unknown = words - declared_markers()
                assert not unknown, f"pytest -m: {unknown} not declared in pyproject.toml"
            else:
                roots = [ROOT / p for p in paths or testpaths]
                files = [f for r in roots for f in ([r] if r.is_file() else r.rglob("test_*.py"))]
                text = " ".join(f"{f} {f.read_text()}" for f in files)
                missing = [w for w in words if w not in text]
                assert not missing, f"pytest -k: {missing} occur in no test file it selects from"
            n += 2
        elif arg.startswith("-"):
            n = check_option(args, n, specs, "pytest")
        else:
            assert (ROOT / arg.split("::")[0]).exists(), f"pytest: {arg} does not exist"
            n += 1
    for testpath in testpaths:
        assert (ROOT / testpath).is_dir(), f"pyproject.toml's testpath {testpath} does not exist"


def gpu_check_stages():
    text = (ROOT / "benchmarks/gpu_check.sh").read_text()
    return {s for part in re.findall(r'ALL_STAGES="(?:\$ALL_STAGES )?([^"]*)"', text)
            for s in part.split()}


def check_command(tokens):
    env, tokens = split_env(tokens)
    check_env(env)
    program, args = tokens[0], tokens[1:]
    call = python_call(tokens)
    if program == "torchrun":
        assert call, "torchrun launches no module"
        torchrun_script(args)
        check_python(*call)
    elif call:
        check_python(*call)
    elif program == "pytest":
        check_pytest(args)
    elif program == "bash":
        script = args[0]
        assert (ROOT / script).exists(), f"{script} does not exist"
        if script == "benchmarks/gpu_check.sh":
            text = (ROOT / script).read_text()
            for name in env:
                assert name in EXTERNAL_ENV or f"{name}" in text, f"gpu_check.sh reads no {name}"
            unknown = set(env.get("STAGES", "").split()) - gpu_check_stages()
            assert not unknown, f"gpu_check.sh has no stages {unknown}"
    elif program == "pip":
        extras = PYPROJECT["project"]["optional-dependencies"]
        for arg in args:
            match = re.fullmatch(r"\.\[([\w,-]+)\]", arg)
            if match:
                for extra in match[1].split(","):
                    assert extra in extras, f"pyproject.toml has no extra [{extra}]"
    elif program == "ruff":
        assert "ruff" in PYPROJECT["tool"], "pyproject.toml has no [tool.ruff]"
        test_extra = PYPROJECT["project"]["optional-dependencies"]["test"]
        assert any(d.startswith("ruff") for d in test_extra), "the test extra installs no ruff"
    elif program == "tensorboard":
        assert "tensorboard" in PYPROJECT["project"]["optional-dependencies"]["cifar"]
    else:
        raise AssertionError(f"no check for the program {program}: add one to tests/test_docs.py")


@pytest.mark.parametrize("where, command, tokens", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_command_is_valid(where, command, tokens):
    check_command(tokens)


# ---- running a command -------------------------------------------------------------------------

def rule(command):
    """("run", expected output) / ("slow", expected output) / ("skip", reason) / None."""
    for kind, rules in (("run", RUN), ("slow", RUN_SLOW)):
        for pattern, expected in rules:
            if re.fullmatch(pattern, command):
                return kind, expected
    for pattern, reason in SKIP:
        if re.search(pattern, command):
            return "skip", reason
    return None


def run_cases():
    return [pytest.param(where, command, tokens, id=where,
                         marks=[pytest.mark.slow] if (rule(command) or ("",))[0] == "slow" else [])
            for where, command, tokens in COMMANDS]


@pytest.mark.parametrize("where, command, tokens", run_cases())
def test_command_runs(where, command, tokens):
    found = rule(command)
    assert found, (f"{where}: no rule says whether to run `{command}`: add it to RUN, RUN_SLOW "
                   "or SKIP in tests/test_docs.py")
    kind, detail = found
    if kind == "skip":
        pytest.skip(f"not run: {detail}: {command}")
    call = python_call(tokens)
    if call and call[1][-1:] == ["--help"]:
        # `python -m X [sub] --help`: run in the one subprocess that gathers every --help (runpy,
        # as python -m does), not one process (and one torch import) each
        text = helps()[" ".join([call[0], *call[1][:-1]])]
        assert "usage:" in text and "\nraised " not in text, f"`{command}`:\n{text[-3000:]}"
        return
    env, tokens = split_env(tokens)
    done = subprocess.run([program_path(tokens[0]), *tokens[1:]], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **env})
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"`{command}` exited {done.returncode}:\n{output[-3000:]}"
    assert re.search(detail, output), f"`{command}` printed no {detail!r}:\n{output[-3000:]}"


def test_every_documented_command_is_found():
    """The parser sees the commands the pages hold (a broken fence would hide them)."""
    texts = {c for _, c, _ in COMMANDS}
    assert "pip install -e '.[test]'" in texts and "python docs/example.py" in texts
    assert len(COMMANDS) >= 30


# ---- Python examples ---------------------------------------------------------------------------

@pytest.mark.parametrize("where, text", python_blocks(), ids=[b[0] for b in python_blocks()])
def test_python_example(where, text):
    import swin_fused
    tree = ast.parse(text, filename=where)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("swin_fused"):
            module = __import__(node.module, fromlist=["_"])
            for alias in node.names:
                assert hasattr(module, alias.name), f"{where}: {node.module} has no {alias.name}"
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id == "swin_fused":
            assert hasattr(swin_fused, node.attr), f"{where}: swin_fused has no {node.attr}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "swin_fused":
            params = inspect.signature(getattr(swin_fused, node.func.attr)).parameters
            for keyword in node.keywords:
                assert keyword.arg in params, \
                    f"{where}: swin_fused.{node.func.attr} has no argument {keyword.arg}"


# ---- links -------------------------------------------------------------------------------------

def slug(heading):
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page):
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {slug(h) for h in re.findall(r"^#+ (.*)$", text, flags=re.M)}


def links():
    found = []
    for page in PAGES:
        text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
        text = re.sub(r"`[^`]*`", "", text)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if not re.match(r"[a-z]+:", target):
                found.append((page, target))
    return found


@pytest.mark.parametrize("page, target", links(),
                         ids=[f"{p.relative_to(ROOT)}->{t}" for p, t in links()])
def test_link_resolves(page, target):
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    assert file.exists(), f"{page.name}: {path} does not exist"
    if anchor:
        assert file.suffix == ".md", f"{page.name}: an anchor into {path}, not a page"
        assert anchor in anchors(file), f"{page.name}: {file.name} has no heading #{anchor}"


def test_every_page_is_linked_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for p, t in links() if p.name == "README.md"}
    for page in PAGES[1:]:
        assert page.resolve() in linked, f"README.md does not link {page.relative_to(ROOT)}"


# ---- the README's first screen and its results -------------------------------------------------

def readme():
    return (ROOT / "README.md").read_text()


def test_readme_first_screen():
    """The first 40 lines: the patch(model) example, the results table, the quick start."""
    first = "\n".join(readme().splitlines()[:40])
    assert "swin_fused.patch(model)" in first.split("## Results")[0]
    assert "| op forward + backward, Swin-T stage 1" in first
    quick = first.split("## Quick start")[1]
    assert 'pip install -e ".[test]"' in quick and "python docs/example.py" in quick
    assert quick.count("```") == 2
    assert len(readme().splitlines()) <= 250


def results_folder():
    results = readme().split("## Quick")[0]
    match = re.search(r"\]\((benchmarks/results/[^/)]+)/README\.md\)", results)
    assert match, "README's results name no folder of benchmarks/results"
    return ROOT / match[1]


def expected_results():
    """The README's results lines, recomputed from the committed bench.json and profile.txt."""
    from benchmarks import summarize
    folder = results_folder()
    doc = json.loads((folder / "bench.json").read_text())
    table = summarize.results(doc)

    def ms(group, impl):
        bench = table[group][impl]
        return bench["stats"]["median"] * 1e3 / bench["extra_info"].get("calls_per_round", 1)

    def peer(group, spec):
        runs = {i: r for i, r in table[group].items() if i in summarize.PEERS and i != "eager"}
        if not runs:
            return "-"
        best = max(runs, key=lambda i: summarize.rate(runs[i]))
        return f"{ms(group, best):{spec}} ({best})"

    def fused(group, impl, spec):
        if impl not in table[group]:
            return "-"
        speedup = summarize.ratio(table, group, impl, "eager", "speed")
        return f"{ms(group, impl):{spec}} ({speedup:.2f}x)"

    def op_row(label, group):
        return (f"| {label}, Swin-T stage 1, ms per call | {ms(group, 'eager'):.2f} "
                f"| {peer(group, '.2f')} | {fused(group, 'fused-v1', '.2f')} "
                f"| {fused(group, 'fused', '.2f')} |")

    def model_row(label, group):
        return (f"| Swin-T 224 training ({label}), ms per step | {ms(group, 'eager'):.1f} "
                f"| {peer(group, '.1f')} | {fused(group, 'fused-v1', '.1f')} "
                f"| {fused(group, 'fused', '.1f')} |")

    profile = next(p for p in sorted(folder.rglob("profile.txt"))
                   if re.search(r"^v1\s+swin_t\s", p.read_text(), flags=re.M))
    kernels = {}
    for gen, fwd, bwd in re.findall(r"^(v\d)\s+swin_t\s+B128 56x56 C96 h3 w7 s3\s+([\d.]+)\s+\d+"
                                    r"\s+\d+%\s+([\d.]+)", profile.read_text(), flags=re.M):
        kernels.setdefault(gen, f"{fwd} / {bwd}")
    memory = table["train-224-swin_t"]
    mem = {i: memory[i]["extra_info"]["peak_mem_mib"] for i in ("eager", "fused")}
    info = doc["machine_info"]
    return [
        f"{info['gpu']}, {doc['datetime'][:10]}, commit {doc['commit_info']['id'][:7]}, "
        f"torch {info['torch']}, triton {info['triton']}, bf16, batch 128",
        op_row("op forward + backward", "op-fwdbwd-swin_t-stage1"),
        op_row("op forward", "op-fwd-swin_t-stage1"),
        f"| kernels alone, Swin-T stage 1, forward / backward ms | - | - | {kernels['v1']} "
        f"| {kernels['v2']} |",
        model_row("reference `swin_t`", "train-224-swin_t"),
        model_row("timm", "train-224-timm_swin_t"),
        f"| Swin-T 224 training (reference `swin_t`), peak MiB | {mem['eager']:.0f} | - | - "
        f"| {mem['fused']:.0f} ({mem['fused'] / mem['eager']:.2f}x) |",
    ]


def test_readme_results_match_the_committed_results():
    lines = readme().splitlines()
    expected = expected_results()
    missing = [row for row in expected if row not in lines]
    assert not missing, ("README.md's results differ from " + str(results_folder()) +
                         "; the lines should read:\n" + "\n".join(expected))
