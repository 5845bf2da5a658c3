"""The LaTeX report, built from one profile's artifacts: `mnist-lab report --profile full|smoke`.

    contract.py  what the source needs from the profile's folder, and what LaTeX may read there
    title.py     the title page's provenance and the appendix's tables (report_info.tex, ...)
    latex.py     latexmk, in a copy of the last good working folder

Everything under artifacts/ may come from another machine (`mnist-lab unpack`), so nothing read
from there is trusted: records and runs are checked field by field before they are quoted,
every value is escaped for LaTeX, the generated TeX files are checked against an allow-list
before latexmk runs, and TeX runs with no shell escape, opening only files below its folders.
"""

from . import contract, latex, title
from .contract import (PROFILE_ENTRIES, check_artifacts, check_latex_inputs, forbidden_tex, required_artifacts,
                       required_values, sources)
from .latex import build, build_dir, first_error, pdf_path
from .title import info, info_tex, provenance_tex, recipes_tex, stale_notebooks, write_info

__all__ = ["PROFILE_ENTRIES", "build", "build_dir", "check_artifacts",
           "check_latex_inputs", "contract", "first_error", "forbidden_tex", "info", "info_tex", "latex", "pdf_path",
           "provenance_tex", "recipes_tex", "required_artifacts", "required_values", "sources",
           "stale_notebooks", "title", "write_info"]
