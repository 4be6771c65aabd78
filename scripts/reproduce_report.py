#!/usr/bin/env python
"""Reproduce the course report; the same as the installed `pneumolab-report` (see pneumolab.reproduce)."""
import sys

from pneumolab.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
