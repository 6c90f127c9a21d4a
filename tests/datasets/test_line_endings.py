"""The dataset readers end lines where a file opened in text mode does."""

import numpy as np

from keras_mtl.datasets.data_files import read_numeric_csv
from keras_mtl.datasets.emotions import read_arff


def test_read_arff_splits_lines_only_at_newlines(tmp_path):
    # `str.splitlines` would also split at the form feed and U+2028 below,
    # making a data row of the comment's tail; a text-mode file never did.
    path = tmp_path / "t.arff"
    path.write_bytes(
        "@relation r\r\n@attribute 'a\u2028b' numeric\n@attribute c numeric\n@data\n"
        "% note\x0c3,4\n% more\u20285,6\n1,2\n".encode()
    )
    attributes, data = read_arff(str(path))
    assert attributes == [("a\u2028b", "numeric"), ("c", "numeric")]
    assert data.tolist() == [[1.0, 2.0]]


def test_read_numeric_csv_splits_lines_only_at_newlines(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"a,b\r\n1,\x0c2\r3,4\n")  # float() skips the form feed
    names, values = read_numeric_csv(str(path))
    assert names == ["a", "b"]
    assert np.asarray(values).tolist() == [[1.0, 2.0], [3.0, 4.0]]
