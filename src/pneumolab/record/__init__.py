"""What a job leaves on disk, without torch: seed records, metrics, results.json and file names.

Jobs, summaries, readers and notebooks share it; it is the contract between training and analysis.
"""
