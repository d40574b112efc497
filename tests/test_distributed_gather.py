"""Cross-rank gathering: two gloo CPU processes must reproduce the single-process loss and gradients.

Each rank holds half of the batch. With ``gather_distributed=True`` a rank scores its local anchors
against the negatives of *all* ranks, so

* the mean over ranks of the per-rank losses equals the single-process loss on the whole batch, and
* the gradient a rank obtains for its local half, ``sum over ranks of d(loss_r)/d(local half)`` (the
  backward of ``gather_with_grad`` all-reduces with SUM), equals ``world_size`` times the single-process
  gradient of that half. DDP then *averages* parameter gradients over ranks, which divides by
  ``world_size`` again, so distributed training follows the gradient of the global-batch loss exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fewlabel.methods.distributed import gather_with_grad, rank, world_size
from fewlabel.methods.losses import DINOLoss, NTXentLoss

WORLD_SIZE = 2
BATCH, DIM, TEMPERATURE = 8, 5, 0.3


def _full_batch() -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    z0 = torch.randn(BATCH, DIM, generator=generator)
    z1 = torch.randn(BATCH, DIM, generator=generator)
    teacher = [torch.randn(BATCH, DIM, generator=generator) for _ in range(2)]
    return z0, z1, teacher


def _projector() -> torch.nn.Linear:
    torch.manual_seed(1)
    return torch.nn.Linear(DIM, DIM)


def _worker(process_rank: int, rendezvous: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # two workers share the CPU; the tensors are tiny
    dist.init_process_group("gloo", init_method=rendezvous, rank=process_rank, world_size=WORLD_SIZE)
    try:
        assert rank() == process_rank and world_size() == WORLD_SIZE
        z0, z1, teacher = _full_batch()
        half = slice(process_rank * BATCH // 2, (process_rank + 1) * BATCH // 2)
        local_z0 = z0[half].clone().requires_grad_(True)
        local_z1 = z1[half].clone().requires_grad_(True)
        loss = NTXentLoss(temperature=TEMPERATURE, gather_distributed=True)(local_z0, local_z1)
        loss.backward()

        # A shared layer in front of the loss, as in DDP: its per-rank gradients get averaged.
        projector = _projector()
        criterion = NTXentLoss(temperature=TEMPERATURE, gather_distributed=True)
        criterion(projector(z0[half]), projector(z1[half])).backward()

        gathered = gather_with_grad(local_z0.detach())
        dino = DINOLoss(output_dim=DIM, center_momentum=0.5)
        dino.update_center([t[half] for t in teacher])
        torch.save(
            {
                "loss": loss.detach(),
                "grad_z0": local_z0.grad,
                "grad_z1": local_z1.grad,
                "grad_weight": projector.weight.grad,
                "gathered": gathered,
                "center": dino.center,
            },
            Path(out_dir) / f"rank{process_rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, torch.Tensor]]:
    out_dir = tmp_path_factory.mktemp("gather")
    rendezvous = f"file://{out_dir / 'rendezvous'}"
    mp.spawn(_worker, args=(rendezvous, str(out_dir)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD_SIZE)]


def test_gather_concatenates_in_rank_order(rank_results: list[dict[str, torch.Tensor]]) -> None:
    z0, _, _ = _full_batch()
    for result in rank_results:
        assert torch.equal(result["gathered"], z0)


def test_ntxent_loss_and_gradients_match_single_process(rank_results: list[dict[str, torch.Tensor]]) -> None:
    z0, z1, _ = _full_batch()
    z0.requires_grad_(True)
    z1.requires_grad_(True)
    single = NTXentLoss(temperature=TEMPERATURE)(z0, z1)
    single.backward()

    mean_rank_loss = torch.stack([r["loss"] for r in rank_results]).mean()
    assert torch.allclose(mean_rank_loss, single.detach(), atol=1e-6)
    # Each rank's own loss differs from the global one (otherwise the check above would be vacuous).
    assert not torch.allclose(rank_results[0]["loss"], rank_results[1]["loss"])

    # Per-rank gradient of the local half = world_size x its single-process gradient (see module doc).
    half = BATCH // 2
    for r, result in enumerate(rank_results):
        rows = slice(r * half, (r + 1) * half)
        assert torch.allclose(result["grad_z0"] / WORLD_SIZE, z0.grad[rows], atol=1e-6)
        assert torch.allclose(result["grad_z1"] / WORLD_SIZE, z1.grad[rows], atol=1e-6)


def test_ddp_averaged_parameter_gradient_matches_single_process(
    rank_results: list[dict[str, torch.Tensor]],
) -> None:
    z0, z1, _ = _full_batch()
    projector = _projector()
    NTXentLoss(temperature=TEMPERATURE)(projector(z0), projector(z1)).backward()
    ddp_average = torch.stack([r["grad_weight"] for r in rank_results]).mean(dim=0)
    assert torch.allclose(ddp_average, projector.weight.grad, atol=1e-6)
    assert not torch.allclose(rank_results[0]["grad_weight"], rank_results[1]["grad_weight"])


def test_without_gathering_ranks_would_miss_negatives(rank_results: list[dict[str, torch.Tensor]]) -> None:
    z0, z1, _ = _full_batch()
    half = BATCH // 2
    local_only = torch.stack(
        [
            NTXentLoss(temperature=TEMPERATURE)(z0[r * half : (r + 1) * half], z1[r * half : (r + 1) * half])
            for r in range(WORLD_SIZE)
        ]
    ).mean()
    mean_rank_loss = torch.stack([r["loss"] for r in rank_results]).mean()
    assert not torch.allclose(local_only, mean_rank_loss, atol=1e-4)


def test_dino_center_is_averaged_over_ranks(rank_results: list[dict[str, torch.Tensor]]) -> None:
    _, _, teacher = _full_batch()
    single = DINOLoss(output_dim=DIM, center_momentum=0.5)
    single.update_center(teacher)
    for result in rank_results:
        assert torch.allclose(result["center"], single.center, atol=1e-6)
