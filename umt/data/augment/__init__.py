"""Fine-tuning augmentation: RandAugment and random erasing (host-side draws and the torch reference ops)."""
