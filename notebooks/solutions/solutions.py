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
# # Solutions · answers to the questions of notebooks 01-11
#
# Try each question before reading its answer. The answers explain mechanisms; where a question asks about your
# run, the answer says which cell prints it (your run's numbers are in each notebook's output, not here: they change
# with every run). This notebook is not part of the numbered course (`run-notebooks` does not run it): it holds no
# code.

# %% [markdown]
# ## 01 · Baseline
# 1. Read it from the cell that prints the test top-1 "with its 95% interval" (and the `this run` column of the
#    table). One test photo is 100 / n points on n test photos (`00_setup` prints it), so the half-width in photos is
#    the half-width in points divided by that.
# 2. The new head starts random, so its first gradients are large and point in arbitrary directions; flowing back
#    into the pretrained backbone they would damage features that took ImageNet to learn. One epoch with the backbone
#    frozen gives the head sensible weights first ("linear probe, then fine-tune").
# 3. `3e-4` (`backbone_lr_ratio=0.1`). The pretrained features are already good, especially in the early layers, so
#    they need small corrections; the head starts from nothing and needs large steps.
# 4. The running mean and variance of each channel, used to normalise activations at test time. Pretrained values
#    come from 1.28 million ImageNet photos; re-estimating them from a few hundred augmented food photos at batch 32
#    gives noisy statistics that no longer match what the following layers expect. The notebook's BatchNorm
#    comparison prints what it did to your run, with its paired test.
# 5. The true class gets 1 − 0.1 + 0.1/10 = 0.91, and each of the 9 other classes 0.1/10 = 0.01 (timm's label
#    smoothing spreads ε over all K classes, the true one included).
# 6. Anything chosen on the test split (an epoch, a setting, a model) is fitted to those photos, so the test number
#    stops being an unbiased estimate of accuracy on new photos. The validation split, carved from train, takes
#    every choice; the test split is read once at the end.
# 7. For example: more epochs with a tuned learning rate and schedule, a higher resolution (ResNet-50 at up to 512
#    px in the fastai run), test-time augmentation, progressive resizing, or a stronger pretrained checkpoint.
# 8. It depends on the run: read the confusion matrix and the top confusions figure. On the tiny set confusions
#    typically fall between dishes of similar colour and texture (two fried or two creamy dishes), which a person
#    could confuse from a photo too. The failure gallery shows whether the label or the model is at fault:
#    Food-101's training photos are deliberately not cleaned.

# %% [markdown]
# ## 02 · A larger backbone
# 1. Depth, width and input resolution, by fixed ratios. The demo's lite0 → lite2 barely changes the resolution
#    (112 → 128 px).
# 2. A bigger model needs more steps to adapt all its parameters and more data to show its extra capacity: over 4
#    epochs on 360 photos both models are far from converged, so the difference in capacity hardly shows.
# 3. The intervals say how precisely each accuracy is known on its own; the gain compares two models on the same
#    photos, where most of the sampling noise is shared. What matters is how many photos each model fixed and broke:
#    a net gain of a few photos could be that many fixed and none broken (clear) or dozens fixed and nearly as many
#    broken (chance). McNemar's test uses exactly those counts; the comparison lines print them.
# 4. Each model is used at the input size it was designed and pretrained for: ResNet-50 at 224 px, B3 at 300 px.
# 5. EfficientNet-B7: 93.0% on Food-101 (Tan & Le 2019, Table 5; B4: 91.5%). The plan's ladder of B3, B4 and
#    ResNet-101 should therefore top out near 93% (Tan & Le 2019's ceiling); the plan's 95%+ needs stronger
#    pretrained features (notebook 10).
# 6. That the pipeline runs end to end at the full profile's sizes (`run-notebooks --rehearse`), that the bigger
#    model trains stably (loss falls, no NaN), its memory at batch 16 and 300 px, and its speed in images/s to
#    estimate the hours.
# 7. The plan's step changes the backbone and its image size together, so its gain mixes two effects. The B3 at the
#    baseline's size differs from the baseline in the backbone alone, and the B3 at its own size differs from it in
#    the size alone: each comparison then has one cause.

# %% [markdown]
# ## 03 · Schedule and augmentation
# 1. It sets the learning rate back to its maximum at the start of each cycle, then lets cosine decay bring it down
#    again. The jump can shake the model out of a sharp minimum it settled into, and each cycle's end is a good
#    checkpoint.
# 2. Early stopping chooses the epoch; choosing it on test would fit the test photos (see 01, question 6).
# 3. Hue shifts and strong colour changes can turn one dish into the look of another (a tomato sauce going brown);
#    blur, noise, brightness and cutout change the look but rarely the dish.
# 4. Training on harder, more varied photos lowers the fit to the training set, but the model learns features that
#    hold across variations and so generalises better to new photos: less overfitting, given enough epochs.
# 5. Read the learning-rate panel and the star on the validation curve. With cycles of 2 epochs the rate is high
#    again half way through a 4-epoch run, so the run spends much of its short time at high rates; and the tested
#    checkpoint is the best epoch by validation top-1 on a few dozen photos, where epochs often tie and the earlier
#    is kept, so the tested 3.1 model may have trained fewer epochs than 02's. The comparison's paired test then says
#    whether the difference is more than chance at all.
# 6. `var_limit` (a variance in pixel units squared) becomes `std_range` (a standard deviation as a fraction of the
#    maximum value), so the translation takes a square root and a scale.
# 7. Long enough that the reference run has converged: on full Food-101 the plan's 150 epochs; at demo scale at
#    least until the reference's validation curve is flat, and with the paired test below the comparison.
# 8. The plan's 3.1 changes the length of training and the schedule together; the control (3.1's length without
#    restarts) splits it into two comparisons of one change each. In the demo the control's settings are exactly
#    those of 02's B3 (the same 4 epochs, no early stopping), so the course reuses that run instead of training the
#    same thing twice, and 3.1 differs from 02's B3 by the restarts alone.

# %% [markdown]
# ## 04 · Mixup and CutMix
# 1. Too little training for too much regularisation. About 12 optimizer steps an epoch for 4 epochs, every batch
#    mixed (`mix_prob=1.0`), half of them by CutMix with α = 1 (on average half of each photo is another dish), on
#    top of advanced augmentation and label smoothing: each step pushes the true class much less, and the run ends
#    before the model fits. The curves show underfitting (validation still rising, training top-1 on mixed photos
#    far below it); the head's first epoch was trained on mixed photos too. The published gains come from 200-300
#    epochs (Zhang et al. 2018).
# 2. With targets 0.91/0.01 (question 5 of 01): steak 0.7 × 0.91 + 0.3 × 0.01 = 0.640, pizza 0.3 × 0.91 + 0.7 ×
#    0.01 = 0.280, and each of the 8 other classes 0.01.
# 3. Beta(0.2, 0.2) is U-shaped, with most mass near 0 and 1: λ is usually close to one photo, a faint second one.
#    Beta(1, 1) is uniform: any blend is as likely as any other.
# 4. The pasted rectangle really shows the other class over that share of the image, so a target proportional to
#    the area says what the image contains. A mixup blend shows both dishes everywhere, faded.
# 5. Training accuracy is measured on the mixed photos against their dominant label, which is harder than clean
#    validation photos.
# 6. Mixing first: it removes the most signal per step. One change at a time: `TECHNIQUE["mixup"] = False` and
#    `TECHNIQUE["cutmix"] = False` in a run whose other settings stay, compared with the McNemar test.
# 7. Because 3.3 adds mixing to 3.2's recipe: comparing with 3.2 isolates the one change. Against 01 the backbone,
#    size, schedule and augmentation would differ too.

# %% [markdown]
# ## 05 · Two-stage training
# 1. The random head's errors are large, so the loss gradients are large, and backpropagation spreads them into every
#    layer: the features shift to serve a head that is still nonsense. Stage 1 freezes the backbone, so only the head
#    moves until it is sensible.
# 2. Only the head (classifier) is trainable; every backbone parameter is frozen. BatchNorm layers have running
#    statistics that change in training mode even without gradients, so the trainer keeps them frozen too.
# 3. The head at the base rate, the backbone at a tenth of it, each split into parameters with and without weight
#    decay. Decaying biases and norm scales pulls them toward zero, which changes what the layer computes rather than
#    regularising it.
# 4. Only more head-only epochs (the default already gives one, and the x0.1 backbone rate). So the effect of a
#    separate stage is small unless the head needs more than one epoch to settle.
# 5. 04's run differs from stage 2 in much more than the frozen stage: it mixes photos, and its rate, epochs and
#    schedule differ. The comparison would credit two-stage training with everything 04's recipe did (there, a
#    loss), so it measured 04, not the technique.
# 6. On validation: stop stage 1 when its validation top-1 stops rising (early stopping), or try 1, 2, 4 epochs and
#    compare their validation curves.

# %% [markdown]
# ## 06 · Test-time augmentation
# 1. Choosing the number of views by test accuracy would fit the test photos: the chosen number flatters the
#    result. Fixed in advance, the comparison stays honest.
# 2. The mirror almost never hurts (food has no left and right). The whole photo can help when the dish is off
#    centre; a tight crop can hurt when it cuts the dish's defining part (the garnish, the plate).
# 3. It averages the same model's outputs on several views: no weights change. It costs one forward pass per view
#    at test time.
# 4. Steak: its mean is (0.60 + 0.35) / 2 = 0.475 against pizza's (0.30 + 0.55) / 2 = 0.425. The average predicts
#    the class with the highest mean, so a class that neither view ranked first can even win, if both gave it a lot.
# 5. Both settings classify the same photos, so their errors are paired. McNemar's test looks only at the photos
#    where they disagree (fixed and broken) and asks whether the split is more uneven than a fair coin would make it.
# 6. Usually more for heavy augmentation: the model was trained to handle varied views, so the extra views are
#    in-distribution and their errors less correlated. A model trained with light augmentation may find crops
#    unusual.

# %% [markdown]
# ## 07 · Higher resolution
# 1. A random-resized crop takes a part of the photo (often a quarter to all of it) and scales it up to the input
#    size, so objects look bigger; the test's centre crop keeps most of the photo, so the same objects look smaller.
# 2. The train/test resolution effect alone: the same weights, tested with objects at the apparent size they had
#    in training. Its comparison line is the first of the three.
# 3. The discrepancy is mainly in the statistics after the last layers (object size changes the pooled
#    activations); the convolutional features themselves transfer across sizes, so adapting the classifier and the
#    final normalisation recovers most of it.
# 4. (384 / 300)² ≈ 1.64 times the activations per image; the plan halves the batch (16 → 8) to fit.
# 5. Upscaling a photo beyond its stored size adds no detail: a model at 384 px then sees interpolated pixels.
#    Food-101's photos are at most 512 px on the long side, so 384 px still shows real detail; the tiny set's 224 px
#    does not.
# 6. On full Food-101 the fine-tune at 384 px: the photos have the detail and 150 epochs adapt the model, while
#    "tested bigger" is a one-off correction of the apparent object size with weights that never saw the new size.

# %% [markdown]
# ## 08 · Ensemble
# 1. If all members make the same mistake, their average makes it too. Averaging cancels errors only where members
#    disagree: one member's wrong confident answer is outvoted by two right ones.
# 2. Architecture (EfficientNet and ResNet), resolution (300, 380, 224 px) and seed. The demo's members share an
#    architecture family, similar small sizes and the same ImageNet starting point, and one is 04's mixing run.
# 3. Each member was trained with its own input size and normalisation: feeding another member's preprocessing
#    would test it on inputs unlike its training photos.
# 4. By validation accuracy (each member's `val_top1` in its summary), as the notebook does, or fix in advance which
#    member is the reference (e.g. the one the plan builds on).
# 5. Notebook 09: distilling the ensemble into one student keeps part of its gain at a single model's cost.
# 6. Yes, when it is much worse than the others and confident in its errors: its probabilities pull the mean
#    toward wrong classes. Try it 2 drops a member to find out on your run.

# %% [markdown]
# ## 09 · Knowledge distillation
# 1. It divides the logits by T before the softmax: T > 1 flattens the distribution, so the small probabilities of
#    the near-miss classes become visible. Gradients of the softened term scale as 1/T², so multiplying by T² keeps
#    its weight comparable across temperatures.
# 2. The soft (teacher) term, weighted 0.7 against 0.3 for the labels. α = 0 leaves plain cross-entropy on the
#    labels: the student trained alone.
# 3. Its soft targets then carry about the same information as the student's own predictions: the near-miss
#    structure is no better, and its extra errors add noise.
# 4. The teacher was trained at its own size and normalisation; feeding it the student's inputs would make it a
#    worse teacher than it is.
# 5. Three forward passes a photo (one per member) against one for the student: distillation buys back most of
#    that cost while keeping part of the accuracy, when it works.
# 6. So that the teacher is the only difference: any other change (epochs, rate, augmentation) would mix its
#    effect into the comparison. That is why the notebook trains its "alone" run from the student's own settings
#    (and reuses an earlier run when the settings are the same).

# %% [markdown]
# ## 10 · Past the plan's 95%
# 1. A logistic-regression classifier on a frozen backbone's features. The features are computed once; fitting a
#    linear model on a few thousand vectors of ~1000 numbers is a small convex problem.
# 2. The scale of raw features varies between photos and between backbones. Normalising each photo's features makes
#    the probe depend on their direction; normalising each backbone separately gives every backbone the same weight
#    in the concatenation.
# 3. At the left (weak penalty) the probe can follow the training photos closely; overfitting would show as
#    validation top-1 falling as the penalty weakens. On small, clean features the left end is often flat instead: a
#    linear model on a few hundred photos has little room to overfit, and the strength barely matters there. At the
#    right (strong penalty) the weights are forced small and validation top-1 falls from underfitting. Read the
#    shape from your sweep figure; the strength is chosen on val so that the test split stays unused.
# 4. CLIP refits on train + val after choosing the strength; here a fine-tune starts from the probe's head and
#    picks its best epoch on val, and a head already fitted on val would make that choice meaningless.
# 5. 05's stage 1 trains the head by SGD-style steps through the frozen network on augmented photos; LP-FT fits it
#    as a logistic regression (full-batch L-BFGS) on cached features of the evaluation view, with its L2 strength
#    chosen on val, then fine-tunes with layer-wise decay rather than one backbone rate.
# 6. 0.8⁵ ≈ 0.33: about three times slower than the head.
# 7. One epoch, whose end is the best checkpoint (the probe itself is not a candidate); the backbone's features move
#    and the probe's head, fitted on the frozen features with a strong penalty, no longer fits them; and the probe
#    saw evaluation views while the fine-tune trains on random crops. The probe cannot tell whether its head helped
#    the fine-tune at all: the new-head control, the same fine-tune from a random head, changes the head alone, so
#    its comparison with LP-FT measures exactly that.
# 8. Lite features come from small ImageNet-1k models: a fine-tune adapts them to food and gains a lot. CLIP's and
#    SigLIP's features, learned from hundreds of millions of image-text pairs, already separate the dishes, so a
#    probe alone reaches 95.9% (CLIP ViT-L/14@336, Radford et al. 2021) and a fine-tune risks distorting them.
# 9. The weights of the recent optimizer steps, each step's weight shrinking by the decay d: roughly the last
#    1 / (1 − d) steps. Early in a run, or over few steps, the average still carries the early, worse weights, so it
#    lags behind the trained weights; it pays on long runs, where it smooths out the last steps' noise.

# %% [markdown]
# ## 11 · Use your model
# 1. Choosing on test would pick the run that happened to do best on those photos, and its test top-1 would then
#    flatter it. Validation chooses; test is read once. Each run also chose its own best epoch on the same
#    validation photos, so the winner's validation top-1 is the maximum of many noisy numbers: a little optimistic.
# 2. It averages the probabilities of the photo and its mirror, which smooths a prediction that depended on the
#    framing; it costs a second forward pass per photo.
# 3. How sure the model is *among its own classes*: the softmax always sums to 1 over them, so a photo of something
#    else still gets a class and a probability. It cannot say "none of these"; a low top-1 probability hints at it,
#    but a model can be sure and wrong about a dish it never saw.
# 4. The graph holds the model's normalisation and softmax but not the resize and crop, which depend on the photo's
#    size and are cheap to do where the photo is read (the sidecar JSON gives the rule). Squashing an uncropped photo
#    to a square changes its aspect ratio: the dish is stretched, unlike every photo the model was tested on, and
#    the answer can change.
# 5. onnxruntime's probabilities against PyTorch's on the same real photos, preprocessed the same way. Real photos
#    exercise the value ranges the model meets in use; random tensors can agree while real inputs expose a
#    difference (an operator exported differently, a preprocessing step left out).
# 6. It would see the photo turned: a sideways plate, a view unlike the upright training photos, and a prediction
#    that may change.
# 7. The machine's other work (and its temperature and clock) changes how much of the CPU the measurement gets; the
#    cell takes the best of three passes to lessen that, and a second reading shows how stable the number is.
