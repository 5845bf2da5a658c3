"""What the notebooks call, and what runs them: the flow from runs to pages and the PDF.

    book.py       Workbook: the runs a notebook reads, its summaries and calibration studies
    outputs.py    figures, tables and macros written for LaTeX
    hook.py       the runner's side of a kernel: staging folder, session record, progress lines
    plan.py       which runs each notebook reads (one declaration, read by the runner and the Workbook)
    notebooks.py, parameters.py, kernel.py, commit.py   running notebooks with papermill, committing their outputs
    provenance.py what each artifact was made from, and whether it still matches
    report/, html.py, archive.py           the PDF, the offline pages, a profile packed to move

`Workbook` is imported lazily, so the command line reaches the runner without matplotlib.
"""


def __getattr__(name: str):
    if name in ("Workbook", "latex_integer", "macro_prefix"):
        from . import book

        return getattr(book, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
