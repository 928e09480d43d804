from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from drmime_batch.errors import LandmarkError
from drmime_batch.evaluation import pair_landmarks, read_landmarks, write_landmarks

EXAMPLE = Path(__file__).resolve().parents[2] / "drmime_batch" / "examples" / "cima-lung-lesion3"


def test_read_anhir_file_with_index_column(tmp_path: Path) -> None:
    p = tmp_path / "a.csv"
    p.write_text(",X,Y\n0,1.5,2\n1,3,4.25\n")
    np.testing.assert_array_equal(read_landmarks(p), [[1.5, 2.0], [3.0, 4.25]])


def test_read_without_index_column_and_odd_case(tmp_path: Path) -> None:
    p = tmp_path / "a.csv"
    p.write_text("x,y\n7,8\n")
    out = read_landmarks(str(p))
    assert out.dtype == np.float64 and out.shape == (1, 2)
    np.testing.assert_array_equal(out, [[7.0, 8.0]])


def test_bundled_example_reads_80_points() -> None:
    pts = read_landmarks(EXAMPLE / "landmarks-5pc-user-PS" / "29-041-Izd2-w35-He-les3.csv")
    assert pts.shape == (80, 2)
    np.testing.assert_allclose(pts[0], [212.4, 158.4])


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    pts = np.array([[0.1, 0.2], [1e3 / 3, 7.0]])
    np.testing.assert_array_equal(read_landmarks(write_landmarks(tmp_path / "o.csv", pts)), pts)


def test_missing_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(LandmarkError, match=r"nope\.csv does not exist"):
        read_landmarks(missing)
    with pytest.raises(LandmarkError, match=r"landmark file .* is not a file"):
        read_landmarks(tmp_path)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", r"bad\.csv is empty"),
        ("a,b,c\n0,1,2\n", r"bad\.csv: header .* no 'X' and 'Y'"),
        (",X,Y\n0,1,abc\n", r"bad\.csv: line 2, column Y is 'abc'"),
        (",X,Y\n0,1,2\n1,3\n", r"bad\.csv: line 3 has 2 fields"),
        (",X,Y\n0,nan,2\n", r"bad\.csv: line 2, column X .* finite"),
        (",X,Y\n", r"bad\.csv has a header but no landmark rows"),
    ],
)
def test_malformed_file_gives_clear_error(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(LandmarkError, match=match):
        read_landmarks(p)


def test_landmark_error_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        read_landmarks(tmp_path / "x.csv")


def test_pairing_takes_first_min_points() -> None:
    f = np.arange(10, dtype=float).reshape(5, 2)
    m = np.arange(6, dtype=float).reshape(3, 2) + 100
    pf, pm = pair_landmarks(f, m)
    np.testing.assert_array_equal(pf, f[:3])
    np.testing.assert_array_equal(pm, m)


def test_pairing_rejects_bad_shapes_and_empty() -> None:
    with pytest.raises(LandmarkError, match=r"fixed_landmarks must have shape \(N, 2\)"):
        pair_landmarks(np.zeros((3, 3)), np.zeros((3, 2)))
    with pytest.raises(LandmarkError, match="no landmark pairs: 0 fixed and 2 moving"):
        pair_landmarks(np.zeros((0, 2)), np.zeros((2, 2)))
