"""The data wing: from photos on disk to batches.

images (the photo reader), splits (Food-101 and class-folder datasets, the validation split from train),
loaders (Dataset, seeded sampler, DataLoader and its workers), augment (albumentations pipelines for training,
evaluation and TTA), prepare and check_data (the `prepare` and `check-data` commands).

May import: base.
"""
