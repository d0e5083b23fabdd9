"""Where an audit reads vectors: a memory-mapped .npy file, and the dispatcher over the SOURCE forms."""

import numpy as np
import pytest

from lora_v2t import V2TError
from lora_v2t.tasks.sources import NpySource, open_source
from lora_v2t.tasks.vectorsource import SourceOptions


@pytest.fixture()
def npy(tmp_path):
    path = tmp_path / "v.npy"
    np.save(path, np.arange(40, dtype=np.float64).reshape(10, 4))
    return path


def test_an_npy_source_reads_rows_by_index_memory_mapped(npy):
    source = open_source(str(npy), SourceOptions())
    assert isinstance(source, NpySource) and isinstance(source.array, np.memmap)
    assert (len(source), source.dim) == (10, 4) and "10 x 4 float64" in source.describe()
    batch = source.read(np.array([1, 7]))
    assert batch.ids == ["1", "7"] and batch.texts is None and batch.vectors.dtype == np.float32
    assert np.array_equal(batch.vectors, np.arange(40).reshape(10, 4)[[1, 7]])


def test_the_fingerprint_follows_the_content(npy):
    before = NpySource(npy).fingerprint()
    assert NpySource(npy).fingerprint() == before
    array = np.load(npy)
    array[-1, 0] += 1  # the last row is always read
    np.save(npy, array)
    assert NpySource(npy).fingerprint() != before


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: np.save(p, np.zeros(4)), r"shape \(4,\): give an \(N, d\) array"),
        (lambda p: np.save(p, np.zeros((0, 4))), "holds no vectors"),
        (lambda p: p.write_text("Где лодка?\n"), "is a text file, not a .npy array"),
    ],
)
def test_bad_npy_files_are_named(tmp_path, make, message):
    path = tmp_path / "bad.npy"
    make(path)
    with pytest.raises(V2TError, match=message):
        open_source(str(path), SourceOptions())


def test_sources_that_are_no_known_form_or_take_no_such_options_are_refused(npy):
    with pytest.raises(V2TError, match=r"SOURCE v\.csv is not one of .*FILE\.npy, FILE\.faiss, chroma:DIR:COLLECTION"):
        open_source("v.csv", SourceOptions())
    with pytest.raises(V2TError, match="--table, --vector-column name.* do not apply to"):
        open_source(str(npy), SourceOptions(table="t", vector_column="v"))
    with pytest.raises(V2TError, match="must be chroma:DIR:COLLECTION"):
        open_source("chroma:only-a-folder", SourceOptions())
    with pytest.raises(V2TError, match="--query name.* do not apply to chroma:db:docs"):
        open_source("chroma:db:docs", SourceOptions(query="select 1"))
