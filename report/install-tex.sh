#!/usr/bin/env bash
# Make sure the TeX tools the report needs are here: latexmk, pdflatex and bibtex with the
# LaTeX packages report/main.tex loads, and poppler's pdftotext (the tests read the PDF).
# On Debian/Ubuntu as root it installs what is missing with apt-get; anywhere else it says
# exactly what to install and fails.
set -euo pipefail

# Debian/Ubuntu packages (texlive-latex-extra pulls in -recommended, -base and -pictures).
PACKAGES="latexmk texlive-latex-base texlive-latex-recommended texlive-latex-extra texlive-fonts-recommended poppler-utils"
# What main.tex loads, as kpsewhich finds it: a TeX Live from elsewhere is fine if it has these.
STYLES="adjustbox.sty amsmath.sty booktabs.sty caption.sty enumitem.sty fancyhdr.sty geometry.sty graphicx.sty hyperref.sty
        listings.sty microtype.sty natbib.sty tcolorbox.sty xcolor.sty plainnat.bst"

missing() {
    for tool in latexmk pdflatex bibtex kpsewhich pdftotext; do
        command -v "$tool" >/dev/null 2>&1 || { echo "$tool"; return; }
    done
    for style in $STYLES; do
        [ -n "$(kpsewhich "$style")" ] || echo "$style"
    done
}

gone="$(missing)"
if [ -z "$gone" ]; then
    echo "TeX: everything the report needs is installed"
    exit 0
fi
echo "TeX: missing $(echo $gone)"

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends $PACKAGES
    gone="$(missing)"
    [ -z "$gone" ] || { echo "TeX: still missing after apt-get: $(echo $gone)" >&2; exit 1; }
    echo "TeX: installed $PACKAGES"
    exit 0
fi

{
    echo "The report needs TeX. Install it, then run make again:"
    if command -v apt-get >/dev/null 2>&1; then
        echo "    sudo apt-get update && sudo apt-get install --no-install-recommends $PACKAGES"
    elif command -v brew >/dev/null 2>&1; then
        echo "    brew install --cask mactex-no-gui && brew install poppler   # MacTeX includes latexmk"
    else
        echo "    TeX Live (https://tug.org/texlive/) with latexmk, plus poppler's pdftotext;"
        echo "    Debian/Ubuntu packages: $PACKAGES"
    fi
} >&2
exit 1
