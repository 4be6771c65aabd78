"""The command-line apps (`pneumolab`, -predict, -eval, -summarize, -report, -cache) and their checks.

Preflight checks, exits and signals, override parsing and run folders live here; no other package imports it.
"""
