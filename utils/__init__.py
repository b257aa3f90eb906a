"""From One-Hot to CLIP: the tested version of every component the book builds.

One module per idea: `runtime` (seed, device), `data` (datasets), `text` (vocabularies and
tokenizers), `word2vec`, `train` (the training loop) and `viz` (figures and widget explorers).
Later chapters add their own modules here.
"""
