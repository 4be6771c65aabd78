#!/usr/bin/env python
"""Reproduce the course report; the same as the installed `pneumolab-report` (see pneumolab.cli.reproduce)."""
import sys

from pneumolab.cli.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
