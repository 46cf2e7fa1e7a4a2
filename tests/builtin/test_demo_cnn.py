"""The demo built-in's calibration labels, as the guard reads them (Builtin.labelled)."""
import torch

from mixprec.builtin import get_builtin
from mixprec.builtin.demo_cnn import labeled_calibration


def test_its_own_calibration_images_get_their_labels_and_nothing_else_does():
    b = get_builtin("demo-cnn")
    images = b.calibration(100)
    labelled = b.labelled(images)
    expected = labeled_calibration(100)
    assert len(labelled) == len(expected) == 2
    for (x, y), (ex, ey) in zip(labelled, expected):
        assert torch.equal(x, ex) and torch.equal(y, ey)
    other = [x.flip(0) for x in images]  # the same shapes, other images: no labels rather than wrong ones
    assert b.labelled(other) is other
    pairs = [(x, torch.zeros(len(x), dtype=torch.long)) for x in images]  # the user's own labels are kept
    assert b.labelled(pairs) is pairs
    assert b.labelled(images[:1] + images[:1]) == images[:1] + images[:1]  # not calibration(n)'s batches
