"""CLIP / SigLIP losses, the logit scale, the pretraining module and the zero-shot / retrieval metrics.

Expected values are written out (computed by hand from the cosine matrix below, or by a small numpy reference
in this file), never by calling the code under test.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from fewlabel.errors import FewlabelError
from fewlabel.methods.clip import (
    CLIPPretraining,
    LogitScale,
    ProjectionHead,
    batch_accuracy,
    clip_loss,
    retrieval_recall,
    siglip_loss,
    zero_shot_classifier,
)

# Images e1, e2, e3; texts (1,0,0), (.6,.8,0), (0,.6,.8): cosines S[i][j] = image_i . text_j (exact).
IMAGES = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1]])
TEXTS = torch.tensor([[1.0, 0, 0], [0.6, 0.8, 0], [0, 0.6, 0.8]])
COSINES = np.array([[1.0, 0.6, 0.0], [0.0, 0.8, 0.6], [0.0, 0.0, 0.8]])


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors: one thread is faster than a thread pool on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _np_clip_loss(cosines: np.ndarray, scale: float, removed: set[tuple[int, int]] = frozenset()) -> float:
    """Reference: mean of row-wise and column-wise softmax cross-entropy, ``removed`` (i, j) cells left out."""
    logits = scale * cosines
    n = len(logits)

    def direction(matrix: np.ndarray, cells: set[tuple[int, int]]) -> float:
        total = 0.0
        for i in range(n):
            keep = [j for j in range(n) if (i, j) not in cells]
            total += -matrix[i, i] + math.log(sum(math.exp(matrix[i, j]) for j in keep))
        return total / n

    return (direction(logits, removed) + direction(logits.T, {(j, i) for i, j in removed})) / 2


def test_clip_loss_matches_the_hand_computed_3x3_case() -> None:
    # scale 2: logits 2*S. Image rows:  -2 + log(e^2 + e^1.2 + 1)   = 0.4603726
    #                                  -1.6 + log(1 + e^1.6 + e^1.2) = 0.6271231
    #                                  -1.6 + log(2 + e^1.6)         = 0.3391779
    # text columns:                    -2 + log(e^2 + 2)             = 0.2395448, then 0.6271231 twice
    # loss = (mean of rows + mean of columns) / 2                    = 0.4867441
    expected = 0.48674406268276615
    log_scale = torch.tensor(math.log(2.0), requires_grad=True)
    loss = clip_loss(IMAGES * 3.0, TEXTS * 0.5, log_scale)  # scaled on purpose: normalisation happens inside
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert _np_clip_loss(COSINES, 2.0) == pytest.approx(expected, abs=1e-12)  # the reference agrees
    loss.backward()
    assert log_scale.grad is not None and log_scale.grad.item() != 0.0
    assert clip_loss(IMAGES, TEXTS, math.log(2.0)).item() == pytest.approx(expected, abs=1e-6)  # float scale


def test_duplicate_captions_are_not_negatives_of_each_other() -> None:
    generator = torch.Generator().manual_seed(3)
    images, texts = torch.randn(4, 5, generator=generator), torch.randn(4, 5, generator=generator)
    cosines = (nn.functional.normalize(images, dim=1) @ nn.functional.normalize(texts, dim=1).T).double().numpy()
    ids = [7, 1, 7, 2]  # pairs 0 and 2 have the same caption
    masked = clip_loss(images, texts, math.log(5.0), caption_ids=ids).item()
    plain = clip_loss(images, texts, math.log(5.0)).item()
    assert masked == pytest.approx(_np_clip_loss(cosines, 5.0, {(0, 2), (2, 0)}), abs=1e-5)
    assert plain == pytest.approx(_np_clip_loss(cosines, 5.0), abs=1e-5)
    assert masked < plain
    # all-distinct ids change nothing; numpy and tensor ids are both accepted
    assert clip_loss(images, texts, math.log(5.0), caption_ids=np.arange(4)).item() == pytest.approx(plain, abs=1e-6)
    with pytest.raises(ValueError, match="caption_ids"):
        clip_loss(images, texts, 1.0, caption_ids=[0, 1])


def test_siglip_loss_matches_the_hand_computed_case() -> None:
    # scale 2, bias -1: logits 2*S - 1; z = +1 on the diagonal, -1 elsewhere; loss = sum softplus(-z * logit) / 3
    # diagonal logits 1, 0.6, 0.6 -> softplus(-1) + 2 softplus(-0.6); off-diagonal logits 0.2, -1, -1, 0.2, -1, -1
    # -> 2 softplus(0.2) + 4 softplus(-1).  Total / 3 = 1.3458540
    def softplus(x: float) -> float:
        return math.log1p(math.exp(x))

    by_hand = (softplus(-1) + 2 * softplus(-0.6) + 2 * softplus(0.2) + 4 * softplus(-1)) / 3
    assert by_hand == pytest.approx(1.3458540257753564, abs=1e-12)
    loss = siglip_loss(IMAGES, TEXTS, math.log(2.0), -1.0)
    assert loss.item() == pytest.approx(by_hand, abs=1e-6)
    # texts 1 and 2 share a caption: cells (1, 2) and (2, 1) become positives
    # (1, 2): logit 0.2, softplus(-0.2) instead of softplus(0.2); (2, 1): logit -1, softplus(1) instead of softplus(-1)
    shared = by_hand + (softplus(-0.2) - softplus(0.2) + softplus(1) - softplus(-1)) / 3
    assert siglip_loss(IMAGES, TEXTS, math.log(2.0), -1.0, caption_ids=[0, 5, 5]).item() == pytest.approx(shared,
                                                                                                        abs=1e-6)


def test_logit_scale_starts_at_clip_temperature_and_is_clamped() -> None:
    scale = LogitScale()
    assert scale.log_scale.item() == pytest.approx(math.log(1 / 0.07), abs=1e-6)  # 2.6592600
    assert scale.scale == pytest.approx(1 / 0.07, rel=1e-5)
    assert scale.temperature == pytest.approx(0.07, rel=1e-5)
    with torch.no_grad():
        scale.log_scale.fill_(7.0)
    assert scale().item() == pytest.approx(math.log(100), abs=1e-6)  # forward clamps the value used...
    assert scale.log_scale.item() == 7.0
    scale.clamp_()  # ... and the step hook clamps the parameter itself
    assert scale.log_scale.item() == pytest.approx(math.log(100), abs=1e-6)
    with torch.no_grad():
        scale.log_scale.fill_(-2.0)
    assert scale().item() == 0.0
    model = CLIPPretraining(*_towers(), embed_dim=8)
    with torch.no_grad():
        model.logit_scale.log_scale.fill_(9.0)
    model.on_train_step_end(0, 10)
    assert model.logit_scale.log_scale.item() == pytest.approx(math.log(100), abs=1e-6)
    siglip = CLIPPretraining(*_towers(), embed_dim=8, loss="siglip")
    assert siglip.logit_scale.scale == pytest.approx(10.0, rel=1e-5)  # SigLIP's initial t = 10, b = -10
    assert siglip.logit_bias is not None and siglip.logit_bias.item() == -10.0


class _FakeTextEncoder:
    """Maps known prompts to fixed, unnormalised vectors and records the calls."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> torch.Tensor:
        self.calls.append(list(texts))
        return torch.tensor([self.table[t] for t in texts])


def test_zero_shot_classifier_averages_normalised_prompt_embeddings() -> None:
    encoder = _FakeTextEncoder({
        "a cat": [3.0, 0.0], "cat drawing": [0.0, 0.5],  # normalised: (1, 0) and (0, 1) -> mean (.5, .5)
        "a dog": [0.0, -2.0], "dog drawing": [0.0, -7.0],  # both (0, -1)
    })
    weights = zero_shot_classifier(encoder, ["cat", "dog"], ["a {}", lambda name: f"{name} drawing"])
    half = 1 / math.sqrt(2)
    assert weights.shape == (2, 2)
    assert torch.allclose(weights, torch.tensor([[half, half], [0.0, -1.0]]), atol=1e-6)
    assert encoder.calls == [["a cat", "cat drawing", "a dog", "dog drawing"]]
    encoder.calls.clear()
    zero_shot_classifier(encoder, ["cat", "dog"], ["a {}", "{c} drawing"], texts_per_batch=2)
    assert encoder.calls == [["a cat", "cat drawing"], ["a dog", "dog drawing"]]  # one class per call
    with pytest.raises(ValueError, match="no place"):
        zero_shot_classifier(encoder, ["cat"], ["a photo"])


def test_retrieval_recall_on_a_constructed_case() -> None:
    # 3 images on the axes; 5 captions: image 0 has captions 0 and 1, image 1 has 2 and 3, image 2 has caption 4.
    images = torch.eye(3)
    texts = torch.tensor([
        [0.2, 1.0, 0.0],  # caption of image 0, but closest to image 1
        [1.0, 0.1, 0.0],  # caption of image 0, closest to image 0
        [0.0, 0.3, 1.0],  # caption of image 1, closest to image 2, image 1 second
        [0.9, 0.0, 0.4],  # caption of image 1, closest to image 0, image 1 last
        [0.0, 0.0, 1.0],  # caption of image 2, closest to image 2
    ])
    owners = [0, 0, 1, 1, 2]
    result = retrieval_recall(images, texts, owners, ks=(1, 2, 3))
    # image -> text, cosine ranking of the 5 captions:
    # image 0: caption 1 (0.995) ranks first -> hit at 1
    # image 1: caption 0 (0.98) ranks first, its own caption 2 (0.29) second -> hit at 2
    # image 2: caption 4 (1.0) first -> hit at 1
    assert result["image_to_text_R@1"] == pytest.approx(2 / 3)
    assert result["image_to_text_R@2"] == pytest.approx(1.0)
    # text -> image: captions 1 and 4 at rank 1; caption 0 and 2 at rank 2; caption 3 at rank 3
    assert result["text_to_image_R@1"] == pytest.approx(2 / 5)
    assert result["text_to_image_R@2"] == pytest.approx(4 / 5)
    assert result["text_to_image_R@3"] == pytest.approx(1.0)
    # Captions 2 and 4 say the same: caption 2 now also retrieves image 2 (its top hit), and image 2 "has" it.
    shared = retrieval_recall(images, texts, owners, ks=(1,), caption_ids=[0, 1, 2, 3, 2])
    assert shared["text_to_image_R@1"] == pytest.approx(3 / 5)
    # A collapsed model (one embedding for everything) gets no credit from ties.
    flat = retrieval_recall(torch.ones(3, 3), torch.ones(5, 3), owners, ks=(1,))
    assert flat == {"image_to_text_R@1": 0.0, "text_to_image_R@1": 0.0}
    with pytest.raises(ValueError, match="index the 3 images"):
        retrieval_recall(images, texts, [0, 0, 1, 1, 3])


def test_batch_accuracy_counts_same_caption_hits() -> None:
    images = torch.eye(3)
    # image 0 scores texts (.6, 0, .8) and image 2 scores (.8, 0, .6): each prefers the other one's caption
    texts = torch.tensor([[0.6, 0.0, 0.8], [0.0, 1.0, 0.0], [0.8, 0.0, 0.6]])
    assert batch_accuracy(images, texts)["image_to_text_accuracy"].item() == pytest.approx(1 / 3)
    same = batch_accuracy(images, texts, [4, 5, 4])  # texts 0 and 2 say the same
    assert same["image_to_text_accuracy"].item() == pytest.approx(1.0)
    assert same["text_to_image_accuracy"].item() == pytest.approx(1.0)


class _ImageTower(nn.Module):
    def __init__(self, embed_dim: int = 16) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, embed_dim), nn.BatchNorm1d(embed_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class _TextTower(nn.Module):
    """Mean of token embeddings under the attention mask: a tokenizer batch dict in, (B, D) out."""

    def __init__(self, vocab: int = 20, embed_dim: int = 12) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.tokens = nn.Embedding(vocab, embed_dim)
        self.dropout = nn.Dropout(0.1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return self.dropout((self.tokens(batch["input_ids"]) * mask).sum(1) / mask.sum(1))


def _towers() -> tuple[_ImageTower, _TextTower]:
    torch.manual_seed(0)
    return _ImageTower(), _TextTower()


def _pairs(n: int = 8) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Image i is a noisy pattern i; its caption is tokens (i, i + 8) plus one padding position."""
    generator = torch.Generator().manual_seed(1)
    patterns = torch.randn(n, 3, 8, 8, generator=generator)
    images = patterns + 0.1 * torch.randn(n, 3, 8, 8, generator=generator)
    ids = torch.stack([torch.arange(n), torch.arange(n) + n, torch.zeros(n, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1, 1, 0]] * n)
    return images, {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("loss_name", ["clip", "siglip"])
def test_a_few_steps_lower_the_loss(loss_name: str) -> None:
    model = CLIPPretraining(*_towers(), embed_dim=8, loss=loss_name, projection_hidden_dim=16 if loss_name == "siglip"
                            else None)
    images, text = _pairs()
    optimizer = torch.optim.AdamW(model.optimizer_groups(), lr=0.02, weight_decay=0.01)
    model.train()
    first, logs = model.training_loss(images, text)
    assert set(logs) >= {"loss", "logit_scale", "temperature", "image_to_text_accuracy", "text_to_image_accuracy"}
    assert ("logit_bias" in logs) == (loss_name == "siglip")
    for step in range(40):
        loss, logs = model.training_loss(images, text)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.on_train_step_end(step, 40)
    assert loss.item() < 0.5 * first.item()
    assert logs["image_to_text_accuracy"].item() > 0.5
    model.eval()
    image_emb, text_emb = model(images, text)
    assert image_emb.shape == text_emb.shape == (8, 8)
    assert torch.allclose(image_emb.norm(dim=1), torch.ones(8), atol=1e-5)
    assert model.hparams["loss"] == loss_name and model.hparams["embed_dim"] == 8
    assert model.name == "clip"


def test_locked_tower_gets_no_gradient_and_stays_in_eval_mode() -> None:
    image_tower, text_tower = _towers()
    before = {k: v.clone() for k, v in image_tower.state_dict().items()}
    model = CLIPPretraining(image_tower, text_tower, embed_dim=8, lock_image=True)
    model.train()
    assert not image_tower.training and text_tower.training
    assert all(not p.requires_grad for p in image_tower.parameters())
    images, text = _pairs()
    optimizer = torch.optim.SGD(model.optimizer_groups(), lr=0.1)
    loss, _ = model.training_loss(images, text)
    loss.backward()
    assert all(p.grad is None for p in image_tower.parameters())
    assert model.image_projection[0].weight.grad is not None
    assert all(p.grad is not None for p in text_tower.parameters())
    optimizer.step()
    after = image_tower.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm running stats untouched too
    assert not any(p is q for group in model.optimizer_groups() for p in group["params"]
                   for q in image_tower.parameters())


def test_options_are_checked() -> None:
    with pytest.raises(FewlabelError, match="clip or siglip"):
        CLIPPretraining(*_towers(), loss="triplet")
    with pytest.raises(TypeError, match="text_dim"):
        CLIPPretraining(_ImageTower(), nn.Identity())
    model = CLIPPretraining(_ImageTower(), nn.Identity(), text_dim=5, embed_dim=4)
    assert model.text_projection[0].weight.shape == (4, 5)
    assert len(ProjectionHead(6, 4, hidden_dim=10)) == 3


def test_trained_image_tower_crops_and_flips_only_where_allowed() -> None:
    from fewlabel.approaches.pretrain_clip import PairCrops, PairRows

    torch.manual_seed(0)
    image = torch.zeros(3, 24, 24, dtype=torch.uint8)
    image[:, :, :12] = 255  # white left half: a flip would put it on the right
    crops = PairCrops(24, flip=False)
    outs = [crops(image) for _ in range(20)]
    assert all(o.shape == (3, 24, 24) and o.dtype == torch.uint8 for o in outs)
    assert any(not torch.equal(o, image) for o in outs)  # cropped
    assert all(o[:, :, 0].float().mean() > o[:, :, -1].float().mean() for o in outs)  # never mirrored
    flipped = PairCrops(24, flip=True)
    assert any(o[:, :, 0].float().mean() < o[:, :, -1].float().mean() for o in (flipped(image) for _ in range(20)))
    rows = PairRows(image[None].repeat(3, 1, 1, 1), np.arange(3), ["a", "b", "c"], np.arange(3), precomputed=False,
                    transform=crops)
    x, caption, ident = rows[1]
    assert x.shape == (3, 24, 24) and caption == "b" and ident == 1


# --- data parallel: local rows against gathered columns ------------------------------------------------------------

WORLD, BATCH, DIM = 2, 6, 4
IDS = [0, 1, 0, 2, 1, 3]  # duplicates within a rank's half and across the halves


def test_gathered_losses_match_the_single_process_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two ranks simulated in one process: rank r's gather returns every rank's shard, its own being the tensor it
    passed, the others slices of the same leaves. Backward through the sum of the rank losses then sums the
    gradients of every rank's loss per shard, which is what ``gather_with_grad``'s all-reduce does (the gather
    itself is checked with two real processes in test_distributed_gather.py)."""
    import fewlabel.methods.clip as clip_module

    generator = torch.Generator().manual_seed(5)
    images = torch.randn(BATCH, DIM, generator=generator, requires_grad=True)
    texts = torch.randn(BATCH, DIM, generator=generator, requires_grad=True)
    half = BATCH // WORLD
    shards = {"image": list(images.split(half)), "text": list(texts.split(half))}
    current = {"rank": 0, "calls": 0}

    def fake_gather(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dtype == torch.long:  # caption ids
            return torch.tensor(IDS)
        kind = "image" if current["calls"] % 2 == 0 else "text"  # the losses gather images, then texts
        current["calls"] += 1
        parts = list(shards[kind])
        parts[current["rank"]] = tensor
        return torch.cat(parts)

    monkeypatch.setattr(clip_module, "world_size", lambda: WORLD)
    monkeypatch.setattr(clip_module, "rank", lambda: current["rank"])
    monkeypatch.setattr(clip_module, "gather_with_grad", fake_gather)
    monkeypatch.setattr(clip_module, "gather_no_grad", fake_gather)

    def losses(name: str, image_rows: torch.Tensor, text_rows: torch.Tensor, ids: list[int]) -> torch.Tensor:
        if name == "clip":
            return clip_loss(image_rows, text_rows, 1.5, caption_ids=ids)
        return siglip_loss(image_rows, text_rows, 1.5, -2.0, caption_ids=ids)

    for name in ("clip", "siglip"):
        images.grad = texts.grad = None
        per_rank = []
        for r in range(WORLD):
            current["rank"] = r
            # what the other rank passes to the gather: its rows, normalised (with gradient to the shared leaves)
            shards["image"] = list((images / images.norm(dim=1, keepdim=True)).split(half))
            shards["text"] = list((texts / texts.norm(dim=1, keepdim=True)).split(half))
            rows = slice(r * half, (r + 1) * half)
            per_rank.append(losses(name, images[rows], texts[rows], IDS[rows]))
        assert not torch.allclose(per_rank[0], per_rank[1])
        torch.stack(per_rank).mean().backward()  # DDP: mean over ranks of the parameter gradients
        distributed_grads = images.grad.clone(), texts.grad.clone()
        monkeypatch.setattr(clip_module, "world_size", lambda: 1)
        images.grad = texts.grad = None
        single = losses(name, images, texts, IDS)
        single.backward()
        monkeypatch.setattr(clip_module, "world_size", lambda: WORLD)
        assert torch.stack(per_rank).mean().item() == pytest.approx(single.item(), abs=1e-6)
        assert torch.allclose(distributed_grads[0], images.grad, atol=1e-6)
        assert torch.allclose(distributed_grads[1], texts.grad, atol=1e-6)
