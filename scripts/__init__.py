"""Repository scripts: notebook set-up cell, re-execution, site assets (not part of the book's `utils`)."""
