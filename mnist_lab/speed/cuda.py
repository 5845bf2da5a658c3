"""The training step as one CUDA graph, replayed: what makes batch-64 training fast on a GPU.

At batch 64 these models are bound by kernel launches on a GPU, not by arithmetic: a step is
30-300 small kernels, each a few microseconds of Python and driver work. `StepGraph` records
one whole full-batch step (the batch gather from the GPU-resident data, the augmentation, the
forward and backward pass, the optimizer step, the loss and accuracy sums) and replays it
⌊n / batch⌋ times an epoch; the last, partial batch runs the same function eagerly.

What capture needs, and where it comes from:
- fixed addresses: the epoch's order and the step's position live in device tensors the step
  reads (`order`, `position`), and gradients are zeroed, not freed;
- a capturable optimizer whose learning rate is a tensor, so StepLR's updates reach the graph
  (`optimizer_options(..., captured=True)`);
- random draws from the default CUDA generator, which graphs advance on every replay;
- warm-up steps before capture (allocations, cuDNN's choices, the optimizer's state), undone
  afterwards so that the first real step starts from the model as initialised.

The trainer uses it on CUDA's fast path (`fit(cuda_graphs=False)`, `mnist-lab train
--no-cuda-graphs` keep the eager loop). On the CPU, `capture=False` runs the same step eagerly,
which is how the tests check it there; on a GPU they also replay captured graphs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import Augmentation, augment
from ..data import Split, normalize, pixels

WARMUP_STEPS = 3  # PyTorch's CUDA-graph examples warm up a few iterations on a side stream


class CapturableSGD(torch.optim.Optimizer):
    """Plain SGD (no momentum, as the report's) with the learning rate as a tensor: torch's own
    SGD turns a tensor learning rate into a Python number, a host sync a graph cannot hold."""

    def __init__(self, params, lr: torch.Tensor, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            torch._foreach_add_(params, torch._foreach_mul(grads, group["lr"]), alpha=-1)


def captured_optimizer(model: nn.Module, optimizer: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The experiment's optimizer in a form a CUDA graph can hold: capturable, its learning rate a
    tensor on the device that StepLR updates in place (torch's schedulers `fill_` a tensor lr)."""
    device = next(model.parameters()).device
    rate = torch.tensor(lr, device=device)
    if optimizer == "sgd":
        return CapturableSGD(model.parameters(), lr=rate, weight_decay=weight_decay)
    optimizer_class = torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW
    return optimizer_class(model.parameters(), lr=rate, weight_decay=weight_decay, capturable=True)


class StepGraph:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, train_set: Split, *, batch_size: int,
                 augmentation: Augmentation, autocast, layout, capture: bool = True):
        device = train_set.labels.device
        self.model, self.optimizer, self.train_set = model, optimizer, train_set
        self.batch_size, self.augmentation, self.autocast, self.layout = batch_size, augmentation, autocast, layout
        self.order = torch.zeros(len(train_set), dtype=torch.long, device=device)
        self.position = torch.zeros((), dtype=torch.long, device=device)
        self.offsets = torch.arange(batch_size, device=device)
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.graph = self._capture() if capture else None

    def _step(self, size: int) -> None:
        index = self.order.index_select(0, self.offsets[:size] + self.position)
        generator = None  # the default generator: graph-safe, seeded by torch.manual_seed
        x = normalize(augment(pixels(self.train_set.images.index_select(0, index), self.layout), self.augmentation,
                              generator))
        y = self.train_set.labels.index_select(0, index)
        with self.autocast:
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)  # the graph keeps writing into the same gradient tensors
        self.loss_sum += loss.detach().float() * size
        self.correct += (logits.argmax(1) == y).sum()
        self.position += size

    def run_epoch(self, order: torch.Tensor) -> tuple[float, float]:
        """Train one epoch in the given order; returns (mean loss, accuracy in percent)."""
        n = len(order)
        self.model.train()
        self.order.copy_(order)
        for tensor in (self.position, self.loss_sum, self.correct):
            tensor.zero_()
        full, rest = divmod(n, self.batch_size)
        for _ in range(full):
            self.graph.replay() if self.graph is not None else self._step(self.batch_size)
        if rest:
            self._step(rest)
        return self.loss_sum.item() / n, 100.0 * self.correct.item() / n

    def _capture(self) -> torch.cuda.CUDAGraph:
        self.model.train()
        saved = [t.detach().clone() for t in self._state()]
        saved_optimizer = {(id(p), key): value.clone() for p, state in self.optimizer.state.items()
                           for key, value in state.items() if isinstance(value, torch.Tensor)}  # a resumed run's
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._step(self.batch_size)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step(self.batch_size)
        with torch.no_grad():  # undo the warm-up: the weights, BatchNorm's statistics, the optimizer's state
            for tensor, value in zip(self._state(), saved):
                tensor.copy_(value)
            for parameter, state in self.optimizer.state.items():
                for key, value in state.items():
                    if isinstance(value, torch.Tensor):  # as it was, or as new (zeros: Adam's first step)
                        before = saved_optimizer.get((id(parameter), key))
                        value.copy_(before) if before is not None else value.zero_()
        return graph

    def _state(self) -> list[torch.Tensor]:
        return [*self.model.parameters(), *self.model.buffers()]
