"""A finished job's files beyond results.json: kept weights, figures and experiment trackers.

`checkpoint` also reads a saved run back for predict and eval.
"""
