"""The use wing: using trained models.

runs (loading any run: fine-tuned, probe, ensemble member; teachers and --init-from weights; `train`, which is
`helpers.train`), inference (evaluate, ensemble, TTA), predict (top-k classes of any photos), export (ONNX and
its check), features (cached backbone features), probe (linear probes on them).

May import: training, data, base.
"""
