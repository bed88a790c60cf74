"""The training wing: the loop and what it needs.

engine (`fit` and the train step: the loop in one file), recipe (optimizer, schedule, mixup/CutMix, loss, EMA),
lr_find (the learning-rate finder through the train step),
distill (teacher and distillation loss), models (timm model builder, heads, parameter groups), weights (reading
weights files safely), checkpoint (atomic last/best checkpoints, resume), run_folder (a run's output folder),
evaluation (validation and logits over a loader), test_predictions (the final test's softmax, kept for a later
evaluation), metrics (top-k, metrics.csv), batch_size (--batch-size auto),
trained (a trained model with its classes and preprocessing).

May import: data, base. It never loads another run: teachers and --init-from weights come in loaded (use.runs).
"""
