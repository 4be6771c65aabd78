"""Reading finished jobs back: points of a sweep, their comparisons and summaries, the report.

Works from the files under a sweep folder alone (see `record`), never from a live job.
"""
