import pytest
import torch
import torch.nn.functional as F

from lightning_modules.losses.ge2e_loss import GE2ELoss, group_by_label


def test_ge2e_loss_is_lower_for_clustered_speakers_and_trains():
    torch.manual_seed(0)
    centers = F.normalize(torch.randn(4, 16), dim=-1)
    clustered = centers[:, None, :] + 0.05 * torch.randn(4, 5, 16)
    random = torch.randn(4, 5, 16)
    loss = GE2ELoss()
    assert loss(clustered) < loss(random)
    # Gradient descent on free embeddings lowers the loss.
    x = random.clone().requires_grad_(True)
    opt = torch.optim.SGD([x, *loss.parameters()], lr=0.5)
    start = float(loss(x))
    for _ in range(50):
        opt.zero_grad(); l = loss(x); l.backward(); opt.step()
    assert float(loss(x)) < 0.5 * start


def test_group_by_label_orders_and_checks_balance():
    emb = torch.arange(12.0).reshape(6, 2)
    labels = torch.tensor([1, 0, 1, 0, 2, 2])
    g = group_by_label(emb, labels)
    assert g.shape == (3, 2, 2)
    assert torch.equal(g[0], emb[[1, 3]])
    with pytest.raises(ValueError, match="same number"):
        group_by_label(emb, torch.tensor([0, 0, 0, 1, 1, 2]))


def test_ge2e_loss_runs_in_fp32_under_bf16_autocast():
    """trainer.precision=bf16-mixed runs the training step under autocast: the loss must neither fail (an fp32
    write into a bf16 similarity matrix) nor lose precision, whatever dtype the embeddings come in."""
    torch.manual_seed(0)
    emb = torch.randn(4, 3, 16, requires_grad=True)
    loss = GE2ELoss()
    reference = loss(emb)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        mixed = loss(emb)
        from_bf16 = loss(emb.to(torch.bfloat16))
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, reference)
    torch.testing.assert_close(from_bf16, loss(emb.to(torch.bfloat16).float()))
    mixed.backward()
    assert torch.isfinite(emb.grad).all()
