"""pneumolab: small networks for normal-vs-pneumonia chest X-rays, swept over seeds."""

__version__ = "0.2.0"
