"""The quality grid: perplexity of every method × pattern × refinement, as a table and plots.

A thin wrapper over ``symprune report`` (logic in ``symprune.report``): the same
flags, results cached under ``--out/cells`` so an interrupted run continues.

    python benches/quality.py                       # the full grid, both built-in models
    python benches/quality.py --models smollm2-135m --methods magnitude,wanda \\
        --patterns 50%,2:4 --refine none --nsamples 16 --seqlen 256 \\
        --eval-seqlen 256 --eval-windows 24 --out report   # a CPU subset
"""

from __future__ import annotations

import sys

from symprune.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
