"""Stage 1 of UMT: video distillation from a frozen CLIP teacher (task ``distill``): its task, step, recipes and
demo."""
