"""The DALI graphs: stage-1 and fine-tuning clips, multi-view evaluation, stage-2 video and image pairs, the pieces
they share and the augmentation ops. Imported only where DALI is used."""
