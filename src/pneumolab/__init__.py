"""pneumolab: small networks for normal-vs-pneumonia chest X-rays, swept over seeds."""

from pneumolab.version import __version__

__all__ = ["__version__", "load"]


def __getattr__(name: str):
    """`pneumolab.load` imported on first use, so `import pneumolab` stays light (no torch, no pandas)."""
    if name == "load":
        from pneumolab.analysis.frame import load

        globals()["load"] = load
        return load
    raise AttributeError(f"module 'pneumolab' has no attribute {name!r}")
