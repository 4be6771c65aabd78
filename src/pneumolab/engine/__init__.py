"""The training engine: heads, optimizers, augmentation and the loop that fits seeds.

`train.fit` turns a config and a dataset into one `record.SeedRun` per seed; nothing else imports it.
"""
