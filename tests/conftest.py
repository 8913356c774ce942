"""Shared pytest fixtures.

Real-file corpus (tests/corpus.py): fetched on demand into a cache outside the repository. A fetch failure skips the
test, or fails it when ``XATTNRES_REQUIRE_CORPUS=1`` (CI, after ``make corpus``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import pytest

from tests import corpus


@pytest.fixture(scope="session")
def corpus_pycerr_series() -> List[Path]:
    """The 4 pyCERR CT series folders (``pat_1`` .. ``pat_4``), CT slices only."""
    return corpus.obtain(corpus.pycerr_series)


@pytest.fixture(scope="session")
def corpus_tptbox() -> Dict[str, Path]:
    """``ct``, ``ct_vert_mask``, ``ct_subreg_mask``, ``mr``, ``mr_vert_mask`` (NIfTI)."""
    return {
        "ct": corpus.obtain(corpus.tptbox_ct),
        "ct_vert_mask": corpus.obtain(corpus.tptbox_ct_vert_mask),
        "ct_subreg_mask": corpus.obtain(corpus.tptbox_ct_subreg_mask),
        "mr": corpus.obtain(corpus.tptbox_mr),
        "mr_vert_mask": corpus.obtain(corpus.tptbox_mr_vert_mask),
    }


@pytest.fixture(scope="session")
def corpus_mricron() -> Dict[str, Path]:
    """``ch2`` (Colin27 T1), ``ch2bet``, ``aal`` (labels 1..116), ``aal_names`` (NIfTI + text)."""
    return {
        "ch2": corpus.obtain(corpus.mricron_ch2),
        "ch2bet": corpus.obtain(corpus.mricron_ch2bet),
        "aal": corpus.obtain(corpus.mricron_aal),
        "aal_names": corpus.obtain(corpus.mricron_aal_names),
    }


@pytest.fixture(scope="session")
def corpus_single_dicoms() -> Dict[str, Path]:
    """One-slice DICOM series folders by file stem: pydicom-data's and pydicom's own test files."""
    folders = {Path(name).stem: corpus.obtain(corpus.pydicom_data_series, name) for name in corpus.PYDICOM_DATA_FILES}
    folders.update({Path(name).stem: corpus.obtain(corpus.pydicom_series, name) for name in corpus.PYDICOM_TEST_FILES})
    return folders
