"""Dry run of the chapter's code with a tiny teacher and few steps: catches errors, not numbers."""
import sys, json, dataclasses
import nbformat
nb = nbformat.read("/work/main/chapters/11_compression.ipynb", as_version=4)
src = []
for c in nb.cells:
    if c.cell_type != "code":
        continue
    s = c.source
    s = s.replace("teacher, chars = load_char_gpt(device=device)",
                  "import dataclasses as _dc\nfrom utils.checkpoints import sha256_file as _sh\n_spec = _dc.replace(CHAR_GPT, path=__import__('pathlib').Path(sys.argv[1]), sha256=_sh(sys.argv[1]))\nteacher, chars = load_char_gpt(_spec, device=device)")
    s = s.replace("STUDENT_STEPS = 400", "STUDENT_STEPS = 45").replace("FINETUNE_STEPS = 150", "FINETUNE_STEPS = 12")
    s = s.replace("VAL_WINDOWS = 128", "VAL_WINDOWS = 32")
    s = s.replace("for T in (64, 256, 1024, 4096, 16384):", "for T in (64, 1024):")
    src.append(s)
open("/tmp/ch11/dry.py", "w").write("import matplotlib\nmatplotlib.use('Agg')\nimport sys\n" + "\n\n".join(src))
