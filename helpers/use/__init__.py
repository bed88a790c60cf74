"""The use wing: using trained models.

runs (loading any run: fine-tuned, probe, ensemble member, its weights checked against its run; teachers and
--init-from weights; `train`, which is `helpers.train`), inference (evaluate, ensemble, TTA), predict (top-k
classes of any photos), export (ONNX, checked end to end from photo files) with reference and reference_template
(FILE.py, the preprocessing in numpy/Pillow/OpenCV), cam (class activation maps: where a model looked), features
(cached backbone features), probe (linear probes on them).

May import: training, data, base.
"""
