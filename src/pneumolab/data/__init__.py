"""Data: every source (phantom, PneumoniaMNIST, an image folder) read into uint8 tensors.

`load.load_data` picks the source by name; `cache` keeps decoded images between runs.
"""
