"""Every pneumolab command in README.md, run as a user types it, on tiny data.

The rules, for whoever edits the README:
1. A command is a line `$ command` inside a fenced code block whose info string is
   `console` (```console). Lines of such a block without the `$ ` prompt are output
   and are not run; a line ending in `\\` continues on the next one. Commands in other
   blocks (bash, text, yaml, ...) are not run.
2. Only commands whose first word starts with `pneumolab` are run (pip, pytest,
   tensorboard, ... are not), one per line (no pipes, no &&), each through `bash -c`.
   A ```console block is one session: its commands run in order in one temporary
   working directory, so a later command can read what an earlier one wrote when the
   README names the directory (hydra.sweep.dir=outputs/bs, then pneumolab-summarize
   outputs/bs). Different blocks run side by side, each in its own directory.
3. HOME is a temporary folder holding `~/chest_xray`: a tiny copy (train/ and test/,
   a few images per class) of the real images, so `data.root=~/chest_xray` and
   `--root ~/chest_xray` are tested as typed. $PNEUMOLAB_DATA holds a tiny
   `pneumoniamnist.npz`, so data=pneumoniamnist needs no network.
4. Made tiny on the way: `pneumolab` gets `debug=smoke` appended (a few images, two
   epochs, two seeds; keys the command sets itself still win), plus
   `hydra.sweeper.n_trials=2` with hparams_search=optuna; `pneumolab-report` gets
   `--epochs 1 --seeds 2` (unless it sets them) and `debug=smoke` as an extra override.
   Other commands run exactly as written.
5. A command must exit 0, or the code a trailing comment states: `# exits 2`.
   A command that needs a service this machine lacks is not run, and its test skips saying
   why: `hydra/launcher=slurm` without a SLURM cluster taking jobs (not installed, controller
   unreachable, no node up), `trainer.device=cuda...` without a CUDA GPU. So are the commands
   after it in the same block, which may read what it writes.
6. Where zsh is installed, each command must split into the same words under zsh as
   under bash (so an unquoted `[0,1]` or `*` fails here, not on a zsh user's machine).
7. A ```python or ```yaml block whose info string names `file=PATH` (```python file=mynets.py)
   is a file the user writes: it is saved as PATH in every session's working directory
   (a custom model, an experiment config).
To try a draft: PNEUMOLAB_README=draft.md pytest tests/test_readme_commands.py
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, SHARED_XRAY, copy_tiny_xray, gpu_unavailable, slurm_unavailable, subprocess_env

README = Path(os.environ.get("PNEUMOLAB_README", REPO / "README.md"))
FENCE = re.compile(r"^(```+|~~~+)\s*(\S*)")
EXIT_MARK = re.compile(r"#\s*exits\s+(\d+)\s*$")
IMAGES_PER_CLASS = 6
COMMAND_TIMEOUT_S = 120


@dataclass(frozen=True)
class Command:
    block: int  # which ```console block of the README
    line: int  # where it starts in the README
    text: str  # as typed, continuation lines joined
    exit_code: int


def extract_commands(markdown: str) -> list[Command]:
    """The `$ pneumolab...` lines of the README's ```console blocks (rules 1, 2 and 5 above)."""
    commands, fence, pending, start, block = [], None, None, 0, 0
    for number, line in enumerate(markdown.splitlines(), 1):
        opening = FENCE.match(line.strip())
        if opening and fence is None:
            fence = opening.group(1) if opening.group(2) == "console" else f"other:{opening.group(1)}"
            block += 1
            continue
        if opening and fence is not None and fence.removeprefix("other:") == opening.group(1) and not opening.group(2):
            fence = None
            continue
        if fence is None or fence.startswith("other:"):
            continue
        if pending is not None:
            pending += " " + line.strip()
        elif line.startswith("$ "):
            pending, start = line[2:].strip(), number
        else:
            continue  # output shown under a command
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        if pending.split(maxsplit=1)[0].startswith("pneumolab"):
            mark = EXIT_MARK.search(pending)
            commands.append(Command(block, start, pending, int(mark.group(1)) if mark else 0))
        pending = None
    return commands


FILE_BLOCK = re.compile(r"^(```+)(python|yaml)\s+file=(\S+)\s*$")


def extract_files(markdown: str) -> dict[str, str]:
    """The ```python and ```yaml blocks marked `file=PATH` (rule 7), by path."""
    files, path, body = {}, None, []
    for line in markdown.splitlines():
        marked = FILE_BLOCK.match(line.strip())
        if path is None and marked:
            path, body = marked.group(3), []
        elif path is not None and line.strip().startswith("```"):
            files[path], path = "\n".join(body) + "\n", None
        elif path is not None:
            body.append(line)
    return files


def tiny(command: str) -> str:
    """The command with the tiny settings of rule 4 appended."""
    code = EXIT_MARK.sub("", command).rstrip()
    words = shlex.split(code, comments=True)
    if words[0] == "pneumolab" and not any(w.startswith("debug=") for w in words):
        optuna = " hydra.sweeper.n_trials=2" if "hparams_search=optuna" in words else ""
        return f"{code} debug=smoke{optuna}"
    if words[0] == "pneumolab-report" and "--from-sweep" not in words:
        options, _, overrides = code.partition(" -- ")
        options += "" if "--epochs" in words else " --epochs 1"
        options += "" if "--seeds" in words else " --seeds 2"
        return f"{options} -- {overrides} debug=smoke".replace("--  ", "-- ")
    return code


def unavailable(command: Command, path: str) -> str | None:
    """Why `command` cannot run on this machine (a service it needs is missing), or None (rule 5).

    `path` is the PATH the command runs with: SLURM's client tools are looked up on it."""
    words = shlex.split(EXIT_MARK.sub("", command.text), comments=True)
    if "hydra/launcher=slurm" in words:
        reason = slurm_unavailable(path)
        if reason:
            return f"README line {command.line} submits to SLURM, but {reason}"
    if any(re.fullmatch(r"\+*trainer\.device=cuda(:\d+)?", word) for word in words):
        reason = gpu_unavailable()
        if reason:
            return f"README line {command.line} trains on a GPU, but {reason}"
    return None


def words_under(shell: str, command: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    """How `shell` splits and expands `command`: its words, NUL-separated."""
    script = f"printf '%s\\0' {command.split(maxsplit=1)[1] if ' ' in command else ''}"
    return subprocess.run([shell, "-c", script], env=env, cwd=cwd, capture_output=True, text=True, timeout=30)


# --- the workspace: HOME with ~/chest_xray, a seeded cache, a working directory -------------


def tiny_pneumoniamnist(path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 40), ("val", 12), ("test", 12)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


COMMANDS = extract_commands(README.read_text(encoding="utf-8")) if README.is_file() else []
FILES = extract_files(README.read_text(encoding="utf-8")) if README.is_file() else {}


def environment(root: Path) -> dict:
    home, cache = root / "home", root / "cache"
    copy_tiny_xray(SHARED_XRAY, home / "chest_xray", IMAGES_PER_CLASS)
    tiny_pneumoniamnist(cache / "pneumoniamnist.npz")
    return subprocess_env() | {
        "HOME": str(home),
        "PNEUMOLAB_DATA": str(cache),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }


def run_session(commands: list[Command], env: dict, work: Path) -> dict[Command, subprocess.CompletedProcess | str]:
    """One ```console block's commands, in order, in its own working directory: each one's run,
    or why it was not run (rule 5: a service it needs is missing, or an earlier command's was)."""
    work.mkdir()
    for name, text in FILES.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text, encoding="utf-8")
    runs, blocked = {}, None  # blocked: why the rest of the block is not run
    for command in commands:
        reason = unavailable(command, env["PATH"])
        if reason:
            runs[command] = reason
            blocked = blocked or f"it follows README line {command.line}, which was not run: {reason}"
        elif blocked:
            runs[command] = blocked
        else:
            runs[command] = subprocess.run(["bash", "-c", tiny(command.text)], cwd=work, env=env, capture_output=True,
                                           text=True, timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL)
    return runs


@pytest.fixture(scope="module")
def readme_runs(tmp_path_factory) -> tuple[dict, dict, Path]:
    """Every README command's run: the blocks side by side, one per core (rule 2)."""
    if not SHARED_XRAY.is_dir():
        pytest.skip(f"real images not found at {SHARED_XRAY}")
    root = tmp_path_factory.mktemp("readme")
    env = environment(root)
    blocks = sorted({c.block for c in COMMANDS})
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        sessions = pool.map(lambda b: run_session([c for c in COMMANDS if c.block == b], env, root / f"block{b}"), blocks)
        runs = {command: run for session in sessions for command, run in session.items()}
    return runs, env, root


def test_readme_has_commands_to_run():
    assert README.is_file(), f"{README} is missing"
    assert COMMANDS, f"{README} has no `$ pneumolab...` line in a ```console block (see this file's docstring)"


@pytest.mark.slow  # every README command, trained for real in subprocesses
@pytest.mark.parametrize("command", COMMANDS, ids=[f"line{c.line}" for c in COMMANDS])
def test_readme_command_runs_as_typed(command: Command, readme_runs):
    runs, env, root = readme_runs
    run = runs[command]
    if isinstance(run, str):
        pytest.skip(run)
    assert run.returncode == command.exit_code, (
        f"README line {command.line}: `{command.text}` (run as `{tiny(command.text)}`) exited {run.returncode}, "
        f"expected {command.exit_code}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    )
    if command.exit_code == 2:
        assert "Traceback" not in run.stderr
    if shutil.which("zsh"):
        bash, zsh = (words_under(shell, command.text, env, root) for shell in ("bash", "zsh"))
        assert zsh.returncode == 0 and zsh.stdout == bash.stdout, (
            f"README line {command.line}: zsh reads `{command.text}` differently from bash "
            f"(quote brackets and globs): bash {bash.stdout.split(chr(0))}, zsh {zsh.stdout.split(chr(0))} {zsh.stderr}"
        )


# --- the extraction rules themselves ---------------------------------------------------------

SAMPLE = """
Intro `pneumolab inline` is not a command.

```console
$ pip install -e .
$ pneumolab head=ce data.batch_size=64
[INFO] - test acc 0.74
$ pneumolab -m data.batch_size=32,64 \\
    head=ce
$ pneumolab data.batchsize=64   # exits 2
```

```bash
pneumolab not-in-a-console-block
```

````console
$ pneumolab-cache list
````
"""


def test_extraction_follows_the_documented_rules():
    commands = extract_commands(SAMPLE)
    assert [c.text for c in commands] == [
        "pneumolab head=ce data.batch_size=64",
        "pneumolab -m data.batch_size=32,64 head=ce",
        "pneumolab data.batchsize=64   # exits 2",
        "pneumolab-cache list",
    ]
    assert [c.exit_code for c in commands] == [0, 0, 2, 0]
    assert [c.line for c in commands] == [6, 8, 10, 18]
    assert [c.block for c in commands] == [1, 1, 1, 3]


def test_files_the_user_writes_are_taken_from_marked_python_blocks():
    markdown = ("```python file=mynets.py\nimport torch\n```\n\n```python\nprint('not a file')\n```\n"
                "```yaml file=conf/experiment/x.yaml\n# @package _global_\ntag: x\n```\n")
    assert extract_files(markdown) == {"mynets.py": "import torch\n",
                                       "conf/experiment/x.yaml": "# @package _global_\ntag: x\n"}


def test_tiny_appends_smoke_settings_without_overriding_the_command():
    assert tiny("pneumolab head=ce") == "pneumolab head=ce debug=smoke"
    assert tiny("pneumolab -m hparams_search=optuna") == "pneumolab -m hparams_search=optuna debug=smoke hydra.sweeper.n_trials=2"
    assert tiny("pneumolab data.batchsize=64   # exits 2") == "pneumolab data.batchsize=64 debug=smoke"
    assert tiny("pneumolab-report --data folder --root ~/chest_xray") == (
        "pneumolab-report --data folder --root ~/chest_xray --epochs 1 --seeds 2 -- debug=smoke")
    assert tiny("pneumolab-report --epochs 3 -- data.limit_per_class=4") == (
        "pneumolab-report --epochs 3 --seeds 2 -- data.limit_per_class=4 debug=smoke")
    assert tiny("pneumolab-cache list") == "pneumolab-cache list"


# --- rule 5: commands needing a service this machine lacks skip, saying why ----------------------

SLURM_COMMAND = next((c for c in COMMANDS if "hydra/launcher=slurm" in c.text),
                     Command(0, 0, "pneumolab -m hydra/launcher=slurm head=bce,ce", 0))
UNREACHABLE = "sbatch: error: Unable to contact slurm controller (connect failure)"


def fake_slurm(bin_dir: Path, *tools: str) -> str:
    """`tools` on a PATH of their own, each failing as SLURM's clients do when slurmctld is down."""
    bin_dir.mkdir(exist_ok=True)
    for tool in tools:
        script = bin_dir / tool
        script.write_text(f"#!/bin/sh\necho '{UNREACHABLE.replace('sbatch', tool)}' >&2\nexit 1\n")
        script.chmod(0o755)
    return str(bin_dir)


def harness_verdict(command: Command, path: str, tmp_path: Path) -> str:
    """Run `command`'s case through the harness (run_session, then the test) with PATH=`path`:
    the reason it skipped with. Fails if the case ran or failed instead."""
    env = subprocess_env() | {"PATH": path}
    runs = run_session([command], env, tmp_path / "work")
    assert isinstance(runs[command], str), "the harness ran the command instead of skipping it"
    with pytest.raises(pytest.skip.Exception) as skipped:
        test_readme_command_runs_as_typed(command, (runs, env, tmp_path))
    return str(skipped.value)


@pytest.mark.parametrize("tools", [(), ("sinfo",)], ids=["no-slurm-tools", "sinfo-without-sbatch"])
def test_slurm_absent_from_path_means_not_installed(tmp_path, tools):
    path = fake_slurm(tmp_path / "bin", *tools)
    reason = slurm_unavailable(path)
    assert reason and reason.startswith("SLURM is not installed: sbatch") and "not found on PATH" in reason
    assert "scripts/local_slurm.sh start" in reason
    assert reason in harness_verdict(SLURM_COMMAND, path, tmp_path)


def test_an_unreachable_slurm_controller_skips_the_readme_slurm_command(tmp_path):
    path = fake_slurm(tmp_path / "bin", "sbatch", "sinfo")
    reason = slurm_unavailable(path)
    assert reason and reason.startswith("the SLURM controller is unreachable"), reason
    assert "Unable to contact slurm controller" in reason
    verdict = harness_verdict(SLURM_COMMAND, path, tmp_path)
    assert f"README line {SLURM_COMMAND.line} submits to SLURM, but the SLURM controller is unreachable" in verdict


def test_commands_after_a_skipped_one_in_its_block_skip_too(tmp_path):
    summarize = Command(SLURM_COMMAND.block, SLURM_COMMAND.line + 1, "pneumolab-summarize outputs/slurm", 0)
    env = subprocess_env() | {"PATH": fake_slurm(tmp_path / "bin", "sbatch", "sinfo")}
    runs = run_session([SLURM_COMMAND, summarize], env, tmp_path / "work")
    assert runs[summarize].startswith(f"it follows README line {SLURM_COMMAND.line}, which was not run: ")


def test_only_commands_needing_a_missing_service_are_held_back(tmp_path):
    path = fake_slurm(tmp_path / "bin")
    assert unavailable(Command(0, 1, "pneumolab -m hydra/launcher=joblib head=bce,ce", 0), path) is None
    assert unavailable(Command(0, 1, "pneumolab data.batchsize=64   # exits 2", 0), path) is None
    cuda = unavailable(Command(0, 7, "pneumolab trainer.device=cuda:1", 0), path)
    assert cuda == (None if gpu_unavailable() is None else f"README line 7 trains on a GPU, but {gpu_unavailable()}")
