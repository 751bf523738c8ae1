"""Triton kernels for UMT's hot path, one op per file, each with a PyTorch reference beside it.

- :mod:`kernels.semantic_topk`: CLS→patch attention, head average, Gumbel-top-k, sorted kept indices.
- :mod:`kernels.token_gather`: gather of visible student tokens (+ position embedding) and teacher targets.
- :mod:`kernels.flash_attention`: non-causal flash attention, forward and backward.

Importing this package needs neither Triton nor a GPU; the Triton paths are chosen through :mod:`umt.ops`.
The package re-exports nothing: each op module has the same name as its public function.

Note: this top-level name shadows the unrelated PyPI package ``kernels`` (Hugging Face's kernel hub) that
transformers probes for; see ``tests/test_install.py`` for the check that transformers is unaffected.
"""
