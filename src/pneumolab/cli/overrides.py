"""The command line, checked before Hydra composes it.

Hydra accepts `+data.batchsize=64` silently (it adds a key nothing reads) and answers a
typo without `+` with advice to add one; a `~` in a path is a grammar error. Here:
- path keys take `~` and any character as typed: the value is expanded and quoted;
- every config key and group option is checked against the composed configuration,
  and a mistake stops the run with one paragraph naming the closest valid spelling;
- schema entries (`schema_*`) and shared include files are not selectable.
Nothing here imports torch: the check costs one composition (a tenth of a second).
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import re
import textwrap
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, Glob, Override, OverrideType
from hydra.core.object_type import ObjectType
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pneumolab.config import BUILT_IN_MODELS, SCHEMAS
from pneumolab.errors import PneumolabError
from pneumolab.extras import require_extras_for_choices

# Config keys that name files or folders: each data source's location, and where outputs and caches go.
PATH_KEYS = (*dict.fromkeys(f"data.{schema.location}" for schema in SCHEMAS["data"].values() if schema.location),
             "data.cache_dir", "hydra.run.dir", "hydra.sweep.dir")
PATH_OVERRIDE = re.compile(r"^(\+{0,2})(" + "|".join(re.escape(k) for k in PATH_KEYS) + r")=(.*)$", re.DOTALL)
# A value Hydra already reads as something other than a plain path.
NOT_A_PLAIN_PATH = re.compile(r"""^(null|['"].*|\w+\(.*\))$""", re.DOTALL)
# A path a command can show unquoted: no space, comma, quote or bracket that would split or change it.
PLAIN_WORD = re.compile(r"[\w./~+-]+")
CONFIG_DIR_FLAGS = ("--config-dir", "-cd")
# Flags after which Hydra does not run the job, or composes from another primary config.
UNCHECKED_FLAGS = {"--help", "-h", "--hydra-help", "--version", "--info", "-i", "--shell-completion", "-sc",
                   "--config-name", "-cn", "--config-path", "-cp", "--experimental-rerun"}
SCHEMA_PREFIX = "schema_"
# Options that other configs include, not choices of their own.
INCLUDES = {"experiment": ("report_settings",)}
GRAMMAR_URL = "https://hydra.cc/docs/advanced/override_grammar/basic/"


# --- paths ---------------------------------------------------------------------


def quote_path(value: str, as_typed: bool = False) -> str:
    """`value` as one Hydra override value, in single quotes, so that Hydra takes it verbatim.

    On a command line (the default) a value Hydra already reads as something else (null, quoted,
    a function) stays as it is, and a leading `~` is expanded. With `as_typed`, `value` is a path and
    nothing else, left as typed when it is one plain word (letters, digits, `./~+-`): a command shown
    to a person then reads as they typed it, and `pneumolab` quotes it on its way to Hydra
    (`rewrite_path_args`).
    """
    if as_typed:
        if PLAIN_WORD.fullmatch(value):
            return value
    elif NOT_A_PLAIN_PATH.match(value):
        return value
    else:
        value = os.path.expanduser(value)
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def rewrite_path_args(args: list[str]) -> list[str]:
    """Path overrides and --config-dir as Hydra reads them; every other argument unchanged.

    A comma-separated path value is a sweep over paths: each one is quoted on its own.
    """
    rewritten = []
    for i, arg in enumerate(args):
        match = PATH_OVERRIDE.match(arg)
        if match:
            prefix, key, value = match.groups()
            paths = value.split(",") if not NOT_A_PLAIN_PATH.match(value) else [value]
            arg = f"{prefix}{key}={','.join(quote_path(p) for p in paths)}"
        elif arg.startswith("--config-dir="):
            arg = "--config-dir=" + os.path.expanduser(arg.split("=", 1)[1])
        elif i > 0 and args[i - 1] in CONFIG_DIR_FLAGS:
            arg = os.path.expanduser(arg)
        rewritten.append(arg)
    return rewritten


# --- the check -----------------------------------------------------------------


def check_command_line(args: list[str], primary_config_dir: str) -> list[str]:
    """The arguments to hand to Hydra, or a PneumolabError naming the first mistake.

    Parsed once, by Hydra's own parsers: its flags, then each override. The extras the chosen
    options need come first (composing without a sweeper plugin would fail without saying why).
    """
    from hydra._internal.utils import get_args_parser

    args = rewrite_path_args(args)
    parsed, _ = get_args_parser().parse_known_args(args)
    overrides = [parse_override(text) for text in parsed.overrides]
    require_extras_for_choices([(o.key_or_group, option) for o in overrides if not o.is_hydra_override()
                                for option in chosen_options(o)])
    globs = {o.input_line: spelled_out for o in overrides if (spelled_out := nested_glob_choices(o, primary_config_dir))}
    args = [globs.get(arg, arg) for arg in args]
    if UNCHECKED_FLAGS.intersection(a.split("=", 1)[0] for a in args):
        return args
    overrides = [parse_override(globs[o.input_line]) if o.input_line in globs else o for o in overrides]
    check_overrides(overrides, primary_config_dir, parsed.config_dir)
    return args


def nested_glob_choices(override: Override, primary_config_dir: str) -> str | None:
    """`experiment=glob(report/*)` spelled out as the list of matching options, or None for any other override.

    Hydra's glob() sees only the top level of a config group (hydra#3055), so on its
    own `experiment=glob(report/*)` would sweep nothing.
    """
    value = override.value() if not override.is_delete() else None
    if not isinstance(value, Glob) or not any("/" in pattern for pattern in value.include):
        return None
    group_dir = Path(primary_config_dir, override.key_or_group)
    options = sorted(p.relative_to(group_dir).with_suffix("").as_posix() for p in group_dir.rglob("*.yaml"))
    chosen = [option for option in options if any(fnmatch.fnmatchcase(option, p) for p in value.include)
              and not any(fnmatch.fnmatchcase(option, p) for p in value.exclude)]
    return f"{override.get_key_element()}={','.join(chosen)}" if chosen else None


def parse_override(text: str) -> Override:
    try:
        return OverridesParser.create().parse_override(text)
    except HydraException as exc:
        key, _, value = text.partition("=")
        reason = str(exc).splitlines()[0]
        raise PneumolabError(
            f"Cannot read the override {text!r} ({reason}). Hydra's grammar needs quotes around a value with "
            f"characters such as ~ ( ) = # or spaces; type it as '{key}=\"{value}\"' (the outer single quotes "
            f"keep the shell from changing it). See {GRAMMAR_URL}."
        ) from None


def check_overrides(overrides: list[Override], primary_config_dir: str, extra_config_dir: str | None) -> None:
    """Compose the chosen group options, then check every group choice and key against them."""
    from hydra import compose

    with config_repository(primary_config_dir, extra_config_dir) as repo:
        groups = all_groups(repo)
        group_overrides = [o for o in overrides if o.key_or_group in groups]
        for override in group_overrides:
            check_group_choice(repo, override)
        try:
            cfg = compose("config", overrides=[first_choice(o) for o in group_overrides if first_choice(o)])
        except (HydraException, OmegaConfBaseException) as exc:
            raise PneumolabError(f"The configuration cannot be composed: {flatten(str(exc))}") from None
    keys = sorted(dotted_keys(cfg))
    for override in overrides:
        if override.key_or_group not in groups and not override.is_hydra_override():
            check_key(cfg, override, keys + sorted(g for g in groups if not g.startswith("hydra")))


@contextmanager
def config_repository(primary_config_dir: str, extra_config_dir: str | None) -> Iterator[Any]:
    """Hydra initialised on the search path `pneumolab [--config-dir DIR]` uses, cleared on exit."""
    from hydra import version
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.config_search_path import SearchPathQuery

    search_path = create_config_search_path(primary_config_dir)
    if extra_config_dir:
        if not os.path.isdir(extra_config_dir):
            raise PneumolabError(
                f"The config directory {extra_config_dir} (--config-dir) does not exist. Give --config-dir the "
                "folder that holds your own config groups, e.g. --config-dir my_configs for my_configs/experiment/mine.yaml."
            )
        # Where Hydra puts it too: after pneumolab's own conf/, before the schemas.
        search_path.prepend("command-line", f"file://{os.path.abspath(extra_config_dir)}",
                            anchor=SearchPathQuery(provider="schema"))
    version.setbase("1.3")
    Hydra.create_main_hydra2(task_name="pneumolab", config_search_path=search_path)
    try:
        yield GlobalHydra.instance().config_loader().repository
    finally:
        GlobalHydra.instance().clear()


def flatten(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


# --- config groups ---------------------------------------------------------------
# Asked of Hydra's config repository itself: the loader's list_groups copies the whole
# repository on every call, a tenth of a second each.


def list_groups(repo: Any, parent: str) -> list[str]:
    return repo.get_group_options(parent, ObjectType.GROUP)


def all_groups(repo: Any, parent: str = "") -> set[str]:
    """Every config group and sub-group (`experiment`, `experiment/report`, `hydra/launcher`, ...)."""
    groups = set()
    for name in list_groups(repo, parent):
        group = f"{parent}/{name}" if parent else name
        groups |= {group} | all_groups(repo, group)
    return groups


def selectable_options(repo: Any, group: str) -> list[str]:
    """The options a user may choose for `group`, sub-folders included (`report/fig1_bce`)."""
    hidden = INCLUDES.get(group, ())
    options = [o for o in repo.get_group_options(group, ObjectType.CONFIG) if not o.startswith(SCHEMA_PREFIX) and o not in hidden]
    for sub in list_groups(repo, group):
        options += [f"{sub}/{o}" for o in selectable_options(repo, f"{group}/{sub}")]
    return options


def chosen_options(override: Override) -> list[str]:
    """The option names a group override picks (several for a sweep; none for a glob or deletion)."""
    value = override.value()
    if isinstance(value, ChoiceSweep):
        return [str(v) for v in value.list]
    return [value] if isinstance(value, str) else []


def first_choice(override: Override) -> str | None:
    """The override with only its first option (a sweep's first point), as Hydra would compose it."""
    if override.is_hydra_override() or override.is_delete():
        return None
    options = chosen_options(override)
    if not options:
        return None
    prefix = {OverrideType.ADD: "+", OverrideType.FORCE_ADD: "++"}.get(override.type, "")
    return f"{prefix}{override.get_key_element()}={options[0]}"


def check_group_choice(repo: Any, override: Override) -> None:
    group = override.key_or_group
    options = selectable_options(repo, group)
    for option in chosen_options(override):
        if option in options:
            continue
        listing = f"The options of {group} are: {', '.join(options)}."
        if option.startswith(SCHEMA_PREFIX) or option in INCLUDES.get(group, ()):
            raise PneumolabError(
                f"{group}={option} is part of pneumolab's configuration, not a choice of its own. {listing}"
            )
        close = difflib.get_close_matches(option, options, n=1)
        hint = f" Did you mean {group}={close[0]}?" if close else ""
        raise PneumolabError(f"{group} has no option {option!r} ({override.input_line}).{hint} {listing}")


# --- config keys -----------------------------------------------------------------


def dotted_keys(node: DictConfig, prefix: str = "") -> Iterable[str]:
    """Every key path of the composed config (`data`, `data.batch_size`, ...), values left unresolved."""
    for key in node.keys():
        path = f"{prefix}{key}"
        yield path
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            yield from dotted_keys(child, f"{path}.")


def nearest_node(cfg: DictConfig, key: str) -> tuple[str, Any]:
    """The deepest existing ancestor of the dotted `key`, and its path ("" for the root)."""
    parts = key.split(".")
    node, path = cfg, ""
    for part in parts[:-1]:
        if not isinstance(node, DictConfig) or part not in node or node._get_node(part)._is_none():
            break
        node = node._get_node(part)
        path = f"{path}.{part}" if path else part
    return path, node


def takes_extra_keys(node: Any) -> bool:
    """A node that builds a user's class (`_target_`) passes it extra keys; so may a mapping without a schema.
    A built-in model's YAML lists every key its class takes."""
    if not isinstance(node, DictConfig):
        return False
    if "_target_" in node:
        target = node._get_node("_target_")._value()
        return not (isinstance(target, str) and target.startswith(BUILT_IN_MODELS))
    return OmegaConf.get_type(node) is dict


def closest_key(key: str, keys: list[str]) -> list[str]:
    """The most similar key whose last part is similar too (a shared `model.` prefix alone is no match)."""
    leaf = key.rsplit(".", 1)[-1]
    return [k for k in difflib.get_close_matches(key, keys, n=5, cutoff=0.6)
            if difflib.SequenceMatcher(None, leaf, k.rsplit(".", 1)[-1]).ratio() >= 0.6][:1]


def check_key(cfg: DictConfig, override: Override, keys: list[str]) -> None:
    key = override.key_or_group
    if key in keys:
        return
    parent_path, parent = nearest_node(cfg, key)
    if isinstance(parent, ListConfig):
        return  # an element of a list (trainer.seeds.0): Hydra checks the index
    within = key[len(parent_path) + 1:] if parent_path else key
    extensible = "." not in within and takes_extra_keys(parent)
    if extensible and override.type in (OverrideType.ADD, OverrideType.FORCE_ADD):
        return
    if extensible:
        raise PneumolabError(
            f"{key} is not in the {parent_path} configuration ({override.input_line}). A new key for a class "
            f"built from {parent_path}._target_ is added with a +: +{key}={override.input_line.split('=', 1)[-1]}"
        )
    close = closest_key(key, keys)
    hint = f" Did you mean {close[0]}?" if close else ""
    siblings = [k.split(".")[-1] for k in keys if k.startswith(f"{parent_path}.") and k.count(".") == parent_path.count(".") + 1]
    where = f" The keys of {parent_path} are: {', '.join(siblings)}." if parent_path and siblings else ""
    raise PneumolabError(
        f"Unknown config key {key} ({override.input_line}).{hint}{where} Nothing was run; "
        "`pneumolab --help` lists the groups and main keys, `pneumolab --cfg job` prints the whole configuration."
    )


# --- --help --------------------------------------------------------------------------


def groups_help() -> str:
    """The `--help` page's list of groups and their options (resolver `pneumolab_groups`)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    repo = GlobalHydra.instance().config_loader().repository
    chosen = HydraConfig.get().runtime.choices
    lines = []
    for group in sorted(list_groups(repo, "")):
        if group != "hydra":
            options = [f"{o}*" if chosen.get(group) == o else o for o in selectable_options(repo, group)]
            lines.append(textwrap.fill(", ".join(options), width=100, initial_indent=f"  {group + ':':<16}",
                                       subsequent_indent=" " * 18, break_on_hyphens=False))
    return "\n".join(lines)
