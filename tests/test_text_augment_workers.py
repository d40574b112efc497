"""Text augmentation in DataLoader workers: every worker draws its own augmentations, reproducibly."""

from __future__ import annotations

import random

import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from fewlabel.augment.text import build_text_policy, random_swap
from fewlabel.engine.data import make_loader

LONG = " ".join(f"w{i}" for i in range(200))


class Augmented(Dataset):
    """``n`` copies of one text, each augmented by ``policy``; items say which worker made them."""

    def __init__(self, policy, n: int = 8):
        self.policy = policy
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[int, str]:
        info = get_worker_info()
        return (info.id if info is not None else -1), self.policy(LONG)


def first(batch):
    return batch[0]


def draw(policy, workers: int, loader_seed: int = 0, n: int = 8) -> list[tuple[int, str]]:
    loader = DataLoader(Augmented(policy, n), batch_size=1, num_workers=workers, collate_fn=first,
                        generator=torch.Generator().manual_seed(loader_seed))
    return list(loader)


def test_each_worker_draws_its_own_augmentations() -> None:
    for name in ("swap", "deletion", "eda"):
        items = draw(build_text_policy(name, rng=7), workers=2)
        assert [w for w, _ in items] == [0, 1] * 4  # batches alternate between the two workers
        texts = [t for _, t in items]
        # Worker 0's draws differ from worker 1's (with identical seeds the two sequences would be equal).
        assert texts[0::2] != texts[1::2], name
        if name != "eda":  # eda may pick WordNet synonyms, which leave these made-up words unchanged
            assert all(texts[i] != texts[i + 1] for i in range(0, 8, 2)), name
            assert len(set(texts)) == 8
        # Same seeds (policy and loader): the same augmentations, worker by worker.
        assert draw(build_text_policy(name, rng=7), workers=2) == items
        assert draw(build_text_policy(name, rng=7), workers=2, loader_seed=1) != items
        assert draw(build_text_policy(name, rng=8), workers=2) != items


def test_workers_reseed_policies_seeded_by_a_torch_generator_too() -> None:
    items = draw(random_swap(3, rng=torch.Generator().manual_seed(3)), workers=2)
    texts = [t for _, t in items]
    assert texts[0] != texts[1] and len(set(texts)) == 8
    assert draw(random_swap(3, rng=torch.Generator().manual_seed(3)), workers=2) == items


def test_single_process_loading_is_unchanged() -> None:
    """``num_workers=0``: exactly the draws of the policy called directly, in order."""
    direct = build_text_policy("eda", rng=random.Random(5))
    expected = [direct(LONG) for _ in range(6)]
    items = draw(build_text_policy("eda", rng=random.Random(5)), workers=0, n=6)
    assert items == [(-1, text) for text in expected]


def test_epochs_differ_with_persistent_and_fresh_workers() -> None:
    policy = build_text_policy("swap", rng=11)
    persistent = make_loader(Augmented(policy, 4), 1, shuffle=False, workers=2, collate_fn=first)
    assert persistent.persistent_workers
    torch.manual_seed(0)
    first_epoch, second_epoch = list(persistent), list(persistent)
    assert first_epoch != second_epoch  # a persistent worker goes on drawing from its own stream
    fresh = DataLoader(Augmented(policy, 4), batch_size=1, num_workers=2, collate_fn=first)
    assert list(fresh) != list(fresh)  # new workers get a new base seed each epoch
    torch.manual_seed(0)
    again = make_loader(Augmented(build_text_policy("swap", rng=11), 4), 1, shuffle=False, workers=2,
                        collate_fn=first)
    assert [list(again), list(again)] == [first_epoch, second_epoch]
