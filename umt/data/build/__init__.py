"""The shard builder: inputs and annotations → re-encoded WebDataset tar shards with DALI indices and a manifest
(``tools/make_shards.py``; the format is :mod:`umt.data.format` and ``shards/README.md``). Runs offline, never in a
training process: the loaders never import it."""
