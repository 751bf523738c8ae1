"""Action-classification fine-tuning (task ``finetune``): its task, step, mixup, recipes and demo."""
