"""Stage 2 of UMT: video-text pre-training (task ``video_text``): its task, step, recipes and demo."""
