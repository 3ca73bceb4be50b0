"""The Lightning and Hugging Face Trainer callbacks, end to end on a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from admmcompress import Irregular
from admmcompress.constraints.nm import NM


def _data(n: int = 128) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 16, generator=g)
    y = (x[:, :4].sum(dim=1) > 0).long()
    return TensorDataset(x, y)


def test_lightning_callback_prunes_exactly_and_keeps_the_masks(tmp_path: Path) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from admmcompress.integrations.lightning import ADMMCallback

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2))

        def training_step(self, batch: tuple, _: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=0.01, weight_decay=0.1)

    torch.manual_seed(0)
    module = Module()
    callback = ADMMCallback(
        {"net.0": Irregular(keep=0.25), "net.2": NM(n=1, m=4)}, admm_epochs=3, rho=0.05
    )
    trainer = pl.Trainer(
        max_epochs=5,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=tmp_path,
    )
    trainer.fit(module, DataLoader(_data(), batch_size=16))
    assert int(callback.masks["net.0"].sum()) == 128  # a quarter of 16 x 32
    assert int((module.net[0].weight != 0).sum()) <= 128  # weight decay revived nothing
    assert callback.schedule.violations(module) == []
    assert callback.schedule.admm.iteration == 3


def test_trainer_callback_prunes_exactly_and_keeps_the_masks(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from admmcompress.integrations.huggingface import ADMMTrainerCallback

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 2)

        def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
            logits = self.fc2(torch.relu(self.fc1(x)))
            out = {"logits": logits}
            if labels is not None:
                out["loss"] = nn.functional.cross_entropy(logits, labels)
            return out

    class Rows(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.data = _data()

        def __len__(self) -> int:
            return len(self.data)

        def __getitem__(self, i: int) -> dict:
            x, y = self.data[i]
            return {"x": x, "labels": y}

    torch.manual_seed(0)
    model = Net()
    callback = ADMMTrainerCallback({"fc*": Irregular(keep=0.2)}, admm_epochs=2, rho=0.05)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        num_train_epochs=4,
        per_device_train_batch_size=16,
        learning_rate=0.01,
        weight_decay=0.1,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = transformers.Trainer(model, args, train_dataset=Rows(), callbacks=[callback])
    trainer.train()
    assert int(callback.masks["fc1"].sum()) == round(0.2 * 16 * 32)
    assert int((model.fc1.weight != 0).sum()) <= round(0.2 * 16 * 32)
    assert callback.schedule.violations(model) == []
