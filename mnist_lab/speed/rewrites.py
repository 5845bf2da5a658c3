"""Changes to a model's computation that keep its function: each returns a new module that
shares the given model's parameters and buffers, and leaves the given model untouched."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..models.vit import TransformerEncoderBlock, VisionTransformer


def share_parameters(module: nn.Module) -> nn.Module:
    """A copy of the module tree whose parameters and buffers are the original's tensors:
    submodules can be swapped in the copy, and training the copy trains the original."""
    clone = copy.copy(module)
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    clone._modules = {name: share_parameters(child) for name, child in module._modules.items()}
    return clone


def swap_modules(model: nn.Module, replacement) -> nn.Module:
    """Replace, in place, each submodule for which `replacement(module)` returns a module."""
    for name, child in list(model.named_children()):
        new = replacement(child)
        if new is not None:
            setattr(model, name, new)
        else:
            swap_modules(child, replacement)
    return model


_RELUS = (torch.relu, F.relu)


def pool_before_relu(model: nn.Module) -> nn.Module:
    """max_pool(relu(x)) computed as relu(max_pool(x)): the same values and gradients (both are
    monotone, and the ReLU of a window's maximum is the maximum of its ReLUs), with the ReLU on
    a quarter of the elements. Returns the model traced by torch.fx, or unchanged if it has no
    such pair."""
    if not any(isinstance(m, nn.MaxPool2d) for m in model.modules()):
        return model
    traced = fx.symbolic_trace(model)
    graph, changed = traced.graph, False
    for pool in list(graph.nodes):
        if not (pool.op == "call_module" and isinstance(traced.get_submodule(pool.target), nn.MaxPool2d)):
            continue
        relu = pool.args[0]
        if not (isinstance(relu, fx.Node) and _is_relu(traced, relu) and len(relu.users) == 1):
            continue
        pool.args = (relu.args[0], *pool.args[1:])
        with graph.inserting_after(pool):
            relu_after = graph.call_function(torch.relu_, (pool,))  # max-pooling's backward needs no output
        pool.replace_all_uses_with(relu_after, delete_user_cb=lambda user: user is not relu_after)  # noqa: B023 (called here, at once)
        graph.erase_node(relu)
        changed = True
    if not changed:
        return model
    graph.lint()
    traced.recompile()
    return traced


def _is_relu(traced: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _RELUS and not node.kwargs.get("inplace", False)
    if node.op == "call_module":
        return type(traced.get_submodule(node.target)) is nn.ReLU
    return node.op == "call_method" and node.target == "relu"


class ClsOnlyEncoderBlock(nn.Module):
    """The last block of the report's ViT, computing the CLS token's output alone.

    VisionTransformer's head reads only `norm(x)[:, 0]`, and after the last block every op is
    token by token, so the other 16 tokens' outputs are never read. Every token still serves as
    a key and a value; the queries, the output projection and the MLP run on 1 token instead of
    17. The block returns (B, 1, dim), whose token 0 is the CLS token as before.
    """

    def __init__(self, block: TransformerEncoderBlock):
        super().__init__()
        for name, child in block.named_children():  # the same names: norm1, attn, norm2, mlp
            self.add_module(name, child)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x[:, :1] + self.attn(h[:, :1], h, h, need_weights=False)[0]  # (B, 1, dim)
        return x + self.mlp(self.norm2(x))


def cls_only_last_block(model: nn.Module) -> nn.Module:
    """For the report's ViT: its last block computes only what the head reads (in place)."""
    if type(model) is VisionTransformer:
        model.blocks[-1] = ClsOnlyEncoderBlock(model.blocks[-1])
    return model
