"""pneumolab: small MLPs for normal-vs-pneumonia chest X-rays, swept over seeds."""

__version__ = "0.1.0"
