"""The collapse study: the faults of a recurrent port that "learned, plateaued, collapsed" (and those wrongly
blamed), applied from outside the correct code, and the numbers that judge them.

    faults.py    the catalogue, and apply_faults: each fault as an override of the correct piece it breaks
    verdict.py   per-seed numbers and the verdict rule
    tables.py    the summary table
    figures.py   the figures

scripts/reproduce_collapse.py runs a study (fixed beside each fault, over seeds) and writes all of it.
"""
