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

from conftest import REPO, SHARED_XRAY, copy_tiny_xray, subprocess_env

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


def run_session(commands: list[Command], env: dict, work: Path) -> dict[Command, subprocess.CompletedProcess]:
    """One ```console block's commands, in order, in its own working directory."""
    work.mkdir()
    for name, text in FILES.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text, encoding="utf-8")
    return {
        command: subprocess.run(["bash", "-c", tiny(command.text)], cwd=work, env=env, capture_output=True,
                                text=True, timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL)
        for command in commands
    }


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


@pytest.mark.parametrize("command", COMMANDS, ids=[f"line{c.line}" for c in COMMANDS])
def test_readme_command_runs_as_typed(command: Command, readme_runs):
    runs, env, root = readme_runs
    run = runs[command]
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
