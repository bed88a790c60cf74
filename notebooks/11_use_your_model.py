# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Food-101 workbook (.venv)
#     language: python
#     name: food101
# ---

# %% [markdown]
# # 11 · Use your model: your own photos, an exported model, an upload box
#
# **What for.** After a night of training the next wish is to ask the model about *your* photos, and to take it
# elsewhere. This notebook takes the course's best run, predicts a few test photos and a folder of your own,
# lets you upload a photo, and exports the model to ONNX, a file that runs without PyTorch (onnxruntime on a
# server, a phone or a browser), checked against PyTorch on real photos.
#
# **Which run.** The one with the highest **validation** top-1 among every run of the course (fine-tuned and
# probe runs), never the test top-1: choosing on test would flatter the number we then quote. Each run chose its
# own best epoch on the same val photos, so the winner's val top-1 is itself a little optimistic; its test top-1,
# measured once, is the honest number.
#
# The same from a terminal:
#
# ```bash
# python -m helpers predict --model RUN my_photos/ lunch.heic --top-k 5          # one JSON line per photo
# python -m helpers predict --model RUN_A RUN_B --tta 2 'phone/**/*.jpg' --output predictions.csv
# python -m helpers export --model RUN --format onnx --output model.onnx        # + model.json beside it
# ```

# %% tags=["parameters"]
profile = "demo"  # demo: tiny set, CPU minutes · medium: 10% of Food-101, an evening on a Mac · full: the plan
data_dir = None  # None: the profile's (demo: data/food-101-tiny, medium: data/food-101-medium, full: data/food-101)
device = "auto"  # auto (cuda, then mps, then cpu) | cuda | mps | cpu
model = None  # None: the course's run with the best validation top-1; or a run folder (a list: their ensemble)
my_photos = "data/my-photos"  # your photos: a folder (read recursively), a file or a glob pattern, e.g. "~/Pictures/food"
TEST_PHOTOS = {"full": 8, "medium": 8, "demo": 6}  # test photos shown (one per class, the first of each)
TOP_K = 5  # classes shown per photo

# %%
import helpers
from helpers.course import course, environment, predict_figures, widgets
from helpers.use import cam, export, runs

c = course.Course("11_use_your_model", profile, data_dir=data_dir, device=device)
photos = str(c.project_path(my_photos))  # a relative path is taken from the project root
trained_runs = c.trained_runs()
trained_runs

# %% [markdown]
# How long this notebook takes in each profile, on which machine, and how that was obtained:

# %%
c.times()

# %%
best = model or c.best_run()
trained = runs.load_trained(best) if not isinstance(best, list) else best
print(f"the model: {best}")

# %% [markdown]
# ## A few test photos
# `helpers.predict` takes a run folder (or a loaded model, or several runs) and photos (files, folders, glob
# patterns) and returns one row per photo: its top-1 class with its probability, and the top-k. It preprocesses
# each photo exactly as `evaluate` does, so on labelled photos its top-1 is `evaluate`'s.

# %%
samples = environment.sample_images(c.data_dir, "test")[: c.pick(TEST_PHOTOS)]
table = helpers.predict(trained, [p for p, _ in samples], top_k=TOP_K, device=device)
table.insert(1, "true", [name for _, name in samples])
table[["path", "true", "class", "probability"]]

# %%
predict_figures.photo_predictions(table, n=len(table), cols=2, title="Test photos and the model's top classes",
                                  folder=c.figures, name="11_test_photos")

# %% [markdown]
# ## Your own photos
# `my_photos` above points at a folder of photos as a phone or a browser saves them: a JPEG stored turned with
# an EXIF orientation tag (read upright), a PNG, a WebP, an HEIC, and a pizza, a class the course's models never
# saw. A model can only answer with its own classes: look at which class it gives the pizza and how sure it is. A
# file that is not a readable photo gets an error row, and the others go on.

# %%
mine = helpers.predict(trained, photos, top_k=TOP_K, device=device)
mine[["path", "class", "label", "probability", "error"]]

# %%
predict_figures.photo_predictions(mine, n=8, cols=2, title="Your photos", folder=c.figures, name="11_my_photos")

# %% [markdown]
# ## Where it looked
# The same photos as the crop the model read, with the class activation map of its top class (Grad-CAM, as in 01's
# failure gallery): red is where the evidence for that class is strongest. Look at the pizza: what did the model
# take for its answer? An ensemble of runs, or a probe over several backbones, has no single map (each member
# reads the photo at its own size and crop): then the photos are shown plain and the cell says why.

# %%
no_map = cam.why_no_map(trained)  # None: this model's maps can be drawn
if no_map:
    print(no_map)
predict_figures.photo_predictions(mine, n=8, cols=2, folder=c.figures, name="11_my_photos_maps",
                                  title="Your photos" + (" (no maps: see above)" if no_map else
                                                         ": where the model looked for its top class"),
                                  model=None if no_map else trained, device=device)

# %% [markdown]
# ## Export to ONNX
# `export.export_onnx` (`python -m helpers export`) writes one graph that takes photos resized and centre-cropped
# by the rule in its sidecar JSON, as float32 RGB in [0, 1], and returns probabilities: the normalisation and
# the softmax are inside it (a probe's backbones and an ensemble's members too). It checks itself: onnxruntime
# and PyTorch predict the same real photos, and a difference above its tolerance (printed with the check) fails the
# export.

# %%
onnx_file = c.output_dir / "export" / "11_model.onnx"
onnx_file.parent.mkdir(parents=True, exist_ok=True)
exported = export.export_onnx(best, onnx_file)
exported

# %% [markdown]
# The same photos through the exported file (onnxruntime) beside PyTorch:

# %%
onnx_table = export.predict_onnx(onnx_file, photos, top_k=TOP_K)
predict_figures.photo_predictions({"PyTorch": mine, "ONNX (onnxruntime)": onnx_table}, n=3, cols=1,
                                  title="PyTorch and the exported ONNX model", folder=c.figures,
                                  name="11_pytorch_vs_onnx")

# %% [markdown]
# ## Upload a photo
# Pick a photo from your computer or phone: the box shows its top-5 from PyTorch and from the exported model.
# Uploads are saved under the course's run folder (`uploads/`), which git ignores. In a notebook executed
# headless (papermill) and opened later, the box shows its first picture instead (re-run the cell to upload).

# %%
examples = [p for p, e in zip(mine["path"], mine["error"]) if e is None]
widgets.upload_predictor(trained, example=examples[0], folder=c.output_dir / "uploads", top_k=TOP_K, onnx=onnx_file)

# %% [markdown]
# ## Size and speed on this machine
# The model's size (PyTorch's float32 weights in memory, and the .onnx file) and images per second on this
# machine's CPU for a batch of 8 photos, best of 3 passes: PyTorch in eager mode against onnxruntime. A laptop
# busy with other work measures less; re-run the cell for a second reading.

# %%
export.speed(best, onnx_file, photos, batch_size=8)

# %% [markdown]
# ## What we saw
# - **The model answers every photo with one of its own classes.** Its top-1 probability says how sure it is among
#   those classes, not whether the photo shows one of them: the pizza, a class it never saw, still gets a class and
#   a probability. Compare that probability with the ones of the test photos it gets right: a model has no "none of
#   these" answer unless it is trained with one.
# - **The exported file is the same model without PyTorch.** The export's check (printed with the export above)
#   compares onnxruntime's probabilities with PyTorch's on the same real photos and fails the export above its
#   tolerance; the figure of PyTorch beside ONNX shows the same photos through both. Where the two figures disagree
#   visibly, the check says by how much, and the export is the thing to fix.
# - **The photo reader is the model's first layer.** The orientation tag, PNG, WebP and HEIC photos go through the
#   same reader and the same resize and crop as the test photos, so a phone's photo is seen upright and at the size
#   the model was tested at.
# - **Size and speed are this machine's.** The table measures PyTorch and onnxruntime on the same batch of photos,
#   best of three passes; another machine, or this one busy, reads differently.

# %% [markdown]
# ## Questions
# 1. Why is the model chosen by validation top-1 and not by test top-1, and why is even its validation top-1 a
#    little optimistic?
# 2. What does `--tta 2` change for a single photo, and what does it cost?
# 3. The pizza is not one of the model's classes. What does its top-1 probability tell you, and what can it not
#    tell you?
# 4. Why does the ONNX graph take photos already resized and centre-cropped, and what happens if you feed it an
#    uncropped photo squashed to a square?
# 5. What does the export's check compare, and why on real photos rather than random tensors?
# 6. A phone stores a photo turned, with an EXIF orientation tag. What would the model see if the reader ignored
#    the tag?
# 7. Why can two readings of the speed table on the same machine differ?

# %% [markdown]
# ## Try it
# Change one literal in the parameters cell and re-run the notebook (nothing here trains).
# 1. `my_photos = "~/Pictures/food"` (from `"data/my-photos"`): a folder of your own food photos (any folder works).
#    Which of them does the model get right, and how sure is it of the others?
# 2. `TOP_K = 3` (from `5`): fewer classes per photo in the tables and the upload box.

# %% [markdown]
# ## Further reading
# - fastai, [`Learner.predict` and `Learner.export`](https://docs.fast.ai/learner.html) (the same two steps in fastai).
# - timm, [`inference.py`](https://github.com/huggingface/pytorch-image-models/blob/main/inference.py) (batch prediction with a model's own preprocessing).
# - ONNX Runtime, [documentation](https://onnxruntime.ai/docs/) (running the file on servers, phones and in browsers).
# - Learn PyTorch for Deep Learning, [09: model deployment (FoodVision Big)](https://www.learnpytorch.io/09_pytorch_model_deployment/) (predicting custom photos and deploying the model).
