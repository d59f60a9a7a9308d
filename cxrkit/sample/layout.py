"""What a sample folder holds: its marker, its version and the fixed values of its CSVs.

Kept free of heavy imports so that :mod:`cxrkit.paths` can name the cached sample
folder (``sample-v<SAMPLE_VERSION>-seed<seed>``) without loading the generator.
"""

from __future__ import annotations

__all__ = ["MARKER_NAME", "NO_FINDING_PREDICTION", "SAMPLE_VERSION", "TEST_TRUTH_RAD_ID"]

SAMPLE_VERSION = 1  # bump when cxrkit.sample changes its output, so caches are rebuilt
MARKER_NAME = ".cxrkit-sample"
# test_labels.csv holds one exact box per finding (what was drawn), like a fused table.
TEST_TRUTH_RAD_ID = "wbf"
NO_FINDING_PREDICTION = "14 1 0 0 1 1"
