"""Early stopping waits until the training loss has left chance level (a network stuck at ln(classes) early on
is not stopped there)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from fewlabel.engine.trainer import EarlyStoppingAfterLearning


def _trainer(epoch: int, loss: float, acc: float) -> SimpleNamespace:
    return SimpleNamespace(callback_metrics={"train_loss_epoch": torch.tensor(loss), "val_acc": torch.tensor(acc)},
                           current_epoch=epoch, should_stop=False, global_rank=0,
                           strategy=SimpleNamespace(reduce_boolean_decision=lambda x, all=True: x),
                           fast_dev_run=False, sanity_checking=False)


def test_patience_waits_for_the_loss_to_leave_chance():
    chance = math.log(20)
    stopper = EarlyStoppingAfterLearning("val_acc", patience=2, armed_below=0.9 * chance)
    # Ten epochs at chance with a flat validation score: plain early stopping (patience 2) would stop at epoch 2.
    for epoch in range(10):
        trainer = _trainer(epoch, chance, 0.05)
        stopper._run_early_stopping_check(trainer)
        assert not trainer.should_stop
        assert stopper.wait_count == 0
    assert stopper.armed_at_epoch is None
    # The loss leaves chance: patience starts counting from here.
    trainer = _trainer(10, 0.8 * chance, 0.20)
    stopper._run_early_stopping_check(trainer)
    assert stopper.armed_at_epoch == 10 and not trainer.should_stop
    for epoch, expect_stop in ((11, False), (12, True)):
        trainer = _trainer(epoch, 0.7 * chance, 0.20)
        stopper._run_early_stopping_check(trainer)
        assert trainer.should_stop is expect_stop


def test_armed_state_survives_a_checkpoint():
    stopper = EarlyStoppingAfterLearning("val_acc", patience=3, armed_below=1.0)
    stopper._run_early_stopping_check(_trainer(4, 0.5, 0.9))
    restored = EarlyStoppingAfterLearning("val_acc", patience=3, armed_below=1.0)
    restored.load_state_dict(stopper.state_dict())
    assert restored.armed_at_epoch == 4
    assert float(restored.best_score) == float(stopper.best_score)
