"""FSDP2 sharding of both agents under Lightning's ``ModelParallelStrategy``.

``FSDP2Strategy`` is Lightning's ``ModelParallelStrategy`` with data parallelism over every
process by default (its parent defaults to tensor parallelism across the devices of a node).
``WaltzModule.configure_model`` calls :func:`shard_agent_models` when a device mesh exists, and the
same code runs on CPUs (gloo) and GPUs (nccl); Lightning's FSDP1 ``FSDPStrategy`` refuses CPUs.

Every rank must run the same sequence of collective operations. Sharded forward passes are
collectives (parameters are all-gathered), so generation runs with ``synced_gpus`` and every rank
makes the same number of ``generate`` calls (``waltzlit.distributed.max_over_ranks``).
"""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from waltzlit.memory_plan import normalise_precision


class FSDP2Strategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` whose default is pure data parallelism (FSDP2 over all ranks)."""

    def __init__(
        self,
        data_parallel_size: Literal["auto"] | int = "auto",
        tensor_parallel_size: Literal["auto"] | int = 1,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
    ) -> None:
        super().__init__(
            data_parallel_size=data_parallel_size,
            tensor_parallel_size=tensor_parallel_size,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
        )

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":
            # all processes of all nodes hold shards; the parent would use only the node count
            self._data_parallel_size = self.num_processes * self.num_nodes // int(self._tensor_parallel_size)
        super().setup_environment()


def _hf_model(model: nn.Module) -> nn.Module:
    """The transformers ``PreTrainedModel`` inside a peft wrapper (or the model itself)."""
    if hasattr(model, "get_base_model"):
        return model.get_base_model()
    return model


def _decoder_layers(hf_model: nn.Module) -> list[nn.Module]:
    inner = getattr(hf_model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(f"cannot find decoder layers to shard in {type(hf_model).__name__} (expected .model.layers)")
    return list(layers)


def mixed_precision_policy(precision: str | None):
    """FSDP2's ``MixedPrecisionPolicy`` for Lightning's ``trainer.precision``, None when there is none.

    Under ``bf16-mixed`` (``16-mixed``) each layer is all-gathered and computed in bf16 (fp16) while
    the shards, which are the fp32 master weights the optimizer updates, stay fp32, and gradients
    are reduce-scattered in fp32: the ZeRO-3 mixed-precision layout of the paper's DeepSpeed stack,
    with half the all-gather traffic of fp32 parameters. Any other precision keeps the parameters'
    own dtype end to end.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy

    half = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(normalise_precision(precision))
    return None if half is None else MixedPrecisionPolicy(param_dtype=half, reduce_dtype=torch.float32)


def shard_agent_models(modules: list[nn.Module], mesh, mp_policy=None) -> None:
    """Apply FSDP2 ``fully_shard`` to each decoder layer, then to the inner Hugging Face model.

    The root is the inner HF model, not a peft wrapper around it: ``generate`` and the peft adapter
    switches then act on an ordinary module whose forward triggers the all-gathers. ``mp_policy``
    (:func:`mixed_precision_policy`) sets the dtypes of the gathered parameters and of the
    gradient reduction; None keeps the parameters' dtype.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp_policy = mp_policy or MixedPrecisionPolicy()

    seen: set[int] = set()
    for module in modules:
        hf_model = _hf_model(module)
        if id(hf_model) in seen:  # shared_base: one model serves both agents
            continue
        seen.add(id(hf_model))
        for layer in _decoder_layers(hf_model):
            fully_shard(layer, mesh=mesh, mp_policy=mp_policy)
        fully_shard(hf_model, mesh=mesh, mp_policy=mp_policy)
