"""Evaluation of trained models (docs/design.md, "Layers"): reads checkpoints and shards, never imports the trainer.

Subcommands of ``python -m umt.eval`` (each a module here with a ``main(argv) -> int``):

=============  ========================================================================================
``retrieval``  zero-shot text↔video retrieval of a stage-2 model (R@1/5/10, median/mean rank; VTM re-ranking)
``score``      UMTScore: the VTM match logit of each (video file, caption) pair, decoded directly
``mc``         multiple-choice caption accuracy (MSR-VTT-MC protocol: 0.7 match prob + 0.3 similarity softmax)
``qa``         open-ended video-QA accuracy of a QA checkpoint, overall and per question type
``classify``   multi-view action classification of a fine-tuned model (top-1/5, mean per-class, confusion)
``features``   pooled features of a frozen backbone, written to a file (for the probes)
``knn``        k-NN probe (cosine, temperature-weighted) on two feature files
``linear``     linear probe (logistic regression) on two feature files
=============  ========================================================================================

Importing this package does no I/O and imports neither DALI nor transformers.
"""

from __future__ import annotations

__all__ = ["SUBCOMMANDS"]

#: subcommand → (module, one-line description)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "retrieval": ("umt.eval.retrieval", "zero-shot text-video retrieval of a stage-2 checkpoint"),
    "score": ("umt.eval.score", "UMTScore (VTM match logit) of video files against captions"),
    "mc": ("umt.eval.mc", "multiple-choice video-caption accuracy (MSR-VTT-MC protocol)"),
    "qa": ("umt.eval.qa", "open-ended video-QA accuracy (answer ranking, k_test), per question type"),
    "classify": ("umt.eval.classify", "multi-view classification of a fine-tuned checkpoint"),
    "features": ("umt.eval.features", "extract pooled backbone features to a file"),
    "knn": ("umt.eval.probe", "k-NN probe on extracted features"),
    "linear": ("umt.eval.probe", "linear probe (logistic regression) on extracted features"),
}
