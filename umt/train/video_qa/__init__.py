"""Video question answering (task ``video_qa``): its task, step, recipes and demo."""
