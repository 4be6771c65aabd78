"""Whether a job directory's results.json can stand for the job about to run (a sweep re-run skips it).

Only a results object of the same config, written by the same pneumolab version, is reused;
anything else is recomputed and the log says why. The reader never trusts the file's shape:
it may be another program's JSON, a half-edited file, or an older version's results.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pneumolab import __version__

log = logging.getLogger("pneumolab")


def reusable_results(path: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The results in `path` when they were made from `config` by this pneumolab; else None (and why, logged)."""
    if not path.exists():
        return None
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.info("recomputing: %s is not readable JSON (%s)", path, exc)
        return None
    reason = why_not_reusable(results, config)
    if reason:
        log.info("recomputing: %s %s", path, reason)
        return None
    return results


def why_not_reusable(results: Any, config: dict[str, Any]) -> str | None:
    if not isinstance(results, dict):
        return f"holds a JSON {type(results).__name__}, not a results object"
    missing = [key for key in ("config", "per_seed", "n_diverged", "versions") if key not in results]
    if missing or not isinstance(results["versions"], dict) or not isinstance(results["per_seed"], list):
        return f"lacks {', '.join(missing) or 'well-formed keys'} (written by an older pneumolab, or not by pneumolab)"
    try:
        float(results["summary"]["val_acc"]["mean"] or 0.0)
    except (KeyError, TypeError, ValueError):
        return "lacks summary.val_acc.mean (written by an older pneumolab, or not by pneumolab)"
    written_by = results["versions"].get("pneumolab")
    if written_by != __version__:
        return f"was written by pneumolab {written_by}, this is pneumolab {__version__}"
    if results["config"] != config:
        return f"holds another config (first difference at {first_difference(results['config'], config)})"
    return None


def first_difference(old: Any, new: Any, prefix: str = "") -> str:
    """The dotted key where two configs first differ, e.g. `trainer.epochs`."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            if old.get(key) != new.get(key):
                return first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
    return prefix.rstrip(".") or "the top level"
