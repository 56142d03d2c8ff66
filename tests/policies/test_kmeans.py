import pytest
import torch

from cadence.policies.processes.kmeans import kmeans


def test_recovers_separated_clusters_and_is_seeded():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0], [5.0, -5.0]])
    truth = torch.arange(4).repeat_interleave(50)
    points = centres[truth] + 0.3 * torch.randn(200, 2, generator=gen)
    got, labels = kmeans(points, 4, generator=torch.Generator().manual_seed(1))
    # every true centre has a found centre nearby, and the labels partition like the truth
    assert torch.cdist(centres, got).min(dim=1).values.max() < 0.2
    for c in range(4):
        assert labels[truth == c].unique().numel() == 1
    again, _ = kmeans(points, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(got, again)


def test_every_cluster_keeps_points_with_duplicates():
    points = torch.cat([torch.zeros(10, 3), torch.ones(2, 3)])
    centres, labels = kmeans(points, 4, generator=torch.Generator().manual_seed(0))
    assert torch.bincount(labels, minlength=4).min() >= 1
    assert centres.shape == (4, 3)


def test_bad_inputs():
    with pytest.raises(ValueError, match="k <="):
        kmeans(torch.zeros(3, 2), 4)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        kmeans(torch.zeros(3, 2, 2), 2)
