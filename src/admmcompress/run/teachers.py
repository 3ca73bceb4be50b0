"""The models a distilling phase learns from: a file the config names, or the model as it
was before the first step (kept in the run folder, so a resumed run finds it)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..formats import read_model_file
from ..formats.safetensors_model import save_model
from ..recipe.schema import ConfigError, ModelConfig, StepConfig
from ..train.distributed import DistContext, broadcast_module
from .folder import TEACHER_FILE, RunFolderError
from .inputs import build_model, recorded_model_args


class Teachers:
    """Teachers by the path a config names (None: the model kept before step 1)."""

    def __init__(
        self,
        folder: Path,
        model: ModelConfig,
        steps: list[StepConfig],
        device: torch.device,
        dist: DistContext,
    ) -> None:
        self.folder = folder
        self.model_cfg = model
        self.steps = steps
        self.device = device
        self.dist = dist
        self._loaded: dict[str | None, nn.Module] = {}

    def named(self) -> list[str]:
        """The teacher files the config names (``distill.teacher``), each once."""
        return sorted(
            {
                p.distill.teacher
                for st in self.steps
                for p in (st.admm, st.retrain)
                if p.distill is not None and p.distill.teacher is not None
            }
        )

    def check_files(self) -> None:
        for given in self.named():
            if not Path(given).is_file():
                raise RunFolderError(f"distill.teacher: {given} is not a file")

    def keep_initial(self, model: nn.Module) -> None:
        """Save the model as step 1 starts, if any phase will distill from it."""
        uses = any(
            p.distill and p.distill.teacher is None
            for st in self.steps
            for p in (st.admm, st.retrain)
        )
        path = self.folder / TEACHER_FILE
        if uses and not path.is_file() and self.dist.is_main:
            save_model(
                path,
                model,
                {},
                model_name=self.model_cfg.name,
                model_args=recorded_model_args(self.model_cfg),
            )
        self.dist.barrier()  # the other ranks read it from the (shared) run folder

    def check_outputs(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        """A named teacher must give outputs of the model's shape: found now, not hours in."""
        named = self.named()
        if not named:
            return
        example = torch.zeros(1, *input_shape, device=self.device)
        training = model.training
        with torch.no_grad():
            want = model.eval()(example).shape
            for path in named:
                got = self.get(path)(example).shape
                if got != want:
                    raise ConfigError(
                        f"distill.teacher {path} gives outputs of shape {tuple(got)}, the "
                        f"model {tuple(want)}: the teacher must predict the same classes"
                    )
        model.train(training)

    def get(self, given: str | None) -> nn.Module:
        """The model a phase distills from (loaded once, frozen, in eval mode)."""
        if given not in self._loaded:
            if given is not None:  # checked at start-up; any architecture, every rank reads it
                teacher = read_model_file(Path(given), self.device).model
            else:
                path = self.folder / TEACHER_FILE
                if self.dist.is_main and not path.is_file():
                    raise RunFolderError(
                        f"{path} is missing: distillation was turned on after the run's first "
                        "step began, so the model it learns from (the one before step 1) was "
                        "not kept. Start a new run, name a teacher file, or drop 'distill'"
                    )
                if self.dist.is_main:
                    # this run's own file: it names the config's model, imported already
                    teacher = read_model_file(path, self.device, allow_import=True).model
                else:  # sent from rank 0: the other machines need not see the run folder
                    teacher = build_model(self.model_cfg)
                    teacher.to(self.device)
                broadcast_module(teacher, self.dist)
            self._loaded[given] = teacher.eval().requires_grad_(False)
        return self._loaded[given]
