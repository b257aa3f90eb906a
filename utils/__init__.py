"""From One-Hot to CLIP: the tested version of every component the book builds.

One module per idea: `runtime` (seed, device), `data` (datasets), `text` (vocabularies and
tokenizers), `word2vec`, `train` (the training loop) and `viz` (figures and widget explorers).
Later chapters add their own modules here.
"""
import logging as _logging


def _drop_enum_pytree_notice(record: _logging.LogRecord) -> bool:
    # torchao (imported by transformers when installed) registers Enum classes with torch's pytree, and
    # torch 2.14 logs a deprecation notice for each, once per process, into whichever chapter cell first
    # imports transformers. It is about torchao, not the reader's code; only that notice is dropped.
    return not ("is an Enum subclass" in record.getMessage() and "register_constant" in record.getMessage())


_logging.getLogger("torch.utils._pytree").addFilter(_drop_enum_pytree_notice)
