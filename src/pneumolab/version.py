"""The package version, in a module of its own so that writers of results.json need not import the package."""

__version__ = "0.3.0"
