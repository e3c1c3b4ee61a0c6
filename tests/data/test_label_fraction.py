import pytest
import torch

from mmssl.data.label_fraction import labelled_rows
from mmssl.errors import DataError


def _labels():
    return torch.tensor([0] * 100 + [1] * 50 + [2] * 20 + [-1] * 30)


def test_stratified_nested_and_seeded():
    labels = _labels()
    ten = labelled_rows(labels, 0.1, seed=3)
    assert [int(ten[labels == c].sum()) for c in range(3)] == [10, 5, 2]
    assert not ten[labels == -1].any()
    one = labelled_rows(labels, 0.05, seed=3)
    assert bool((ten | ~one).all())  # the rows of 5 % are among the rows of 10 %
    assert torch.equal(ten, labelled_rows(labels, 0.1, seed=3))
    assert not torch.equal(ten, labelled_rows(labels, 0.1, seed=4))
    assert bool(labelled_rows(labels, 1.0, seed=0).eq(labels >= 0).all())


def test_empty_class_and_no_labels_are_clear_errors():
    with pytest.raises(DataError, match=r"leaves class\(es\) 'tri' without a labelled example.*at least 0.025"):
        labelled_rows(_labels(), 0.02, seed=0, class_names=["a", "b", "tri"])
    with pytest.raises(DataError, match="no labels"):
        labelled_rows(torch.full((5,), -1), 0.5, seed=0)
    with pytest.raises(DataError, match=r"must be in \(0, 1\]"):
        labelled_rows(_labels(), 0.0, seed=0)
