"""A critic for PPO (``advantage_estimator: gae``): one value model per trained agent.

The critic is a copy of the agent's initial transformer backbone (no LM head) with a scalar value
head, as in verl's and OpenRLHF's critics, which start from the actor's weights. For a LoRA agent
the copied backbone is frozen and gets its own LoRA adapter, so only the adapter and the head train.
It reads the same ``AgentBatch`` layout as the policy, so values line up with response tokens.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from waltzlit.agents.logprobs import position_ids_from_mask
from waltzlit.config import LoRAConfig
from waltzlit.types import AgentBatch


class ValueModel(nn.Module):
    """V_phi(s): a transformer backbone and a linear value head.

    Args:
        backbone: a transformers base model (e.g. ``LlamaModel``) returning ``last_hidden_state``,
            possibly wrapped in peft LoRA adapters.
        hidden_size: width of the backbone's hidden states.
        seed: seed of the value head's initialisation.
    """

    def __init__(self, backbone: nn.Module, hidden_size: int, seed: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            # float32 head on float32 features: the values are regression targets, not logits.
            self.value_head = nn.Linear(hidden_size, 1, dtype=torch.float32)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Values of every position, ``[B, L]`` float32, for ``[B, L]`` left-padded inputs."""
        hidden = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        ).last_hidden_state
        return self.value_head(hidden.float()).squeeze(-1)

    def values(self, batch: AgentBatch) -> torch.Tensor:
        """V(s_j) of the state each response token j was sampled from, ``[B, T]`` float32.

        The state before response token j is the prefix ending at position ``P - 1 + j``, the same
        position whose logits give log pi(y_j), so values align with log-probs and rewards.
        """
        width = batch.response_mask.shape[1]
        device = self.value_head.weight.device
        values = self(batch.input_ids.to(device), batch.attention_mask.to(device))
        return values[:, -width - 1 : -1]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the critic's optimizer updates (the LoRA adapter and head, or all)."""
        return [p for p in self.parameters() if p.requires_grad]


def _plain_causal_lm(policy: nn.Module) -> nn.Module:
    """A deep copy of ``policy`` as a plain transformers model: peft adapters merged away.

    Called before any RL step, when a fresh LoRA adapter is still the identity (B = 0), so the copy
    holds the initial (possibly warm-started) weights, i.e. the reference policy's.
    """
    hf_model = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
    if getattr(hf_model, "is_loaded_in_4bit", False) or getattr(hf_model, "hf_quantizer", None) is not None:
        raise ValueError("algorithm.advantage_estimator: 'gae' (a critic) is not available with a 4-bit base")
    policy_copy = copy.deepcopy(policy)
    return policy_copy.merge_and_unload() if hasattr(policy_copy, "merge_and_unload") else policy_copy


def build_critic(policy: nn.Module, lora: LoRAConfig | None = None, seed: int = 0) -> ValueModel:
    """A critic initialised from ``policy``'s backbone.

    Args:
        policy: the agent's causal LM (a peft model for LoRA agents), before any RL update.
        lora: the agent's LoRA settings. None trains the whole copied backbone; otherwise the copy is
            frozen and a LoRA adapter with these settings is trained (a "LoRA critic").
        seed: seed of the value head.

    Returns:
        A ``ValueModel`` in eval mode, on the policy's device and dtype (head in float32).
    """
    hf_model = _plain_causal_lm(policy)
    backbone = getattr(hf_model, hf_model.base_model_prefix)  # the decoder without the LM head
    hidden_size = hf_model.config.hidden_size
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        from waltzlit.agents.loading import peft_wrapping

        backbone.requires_grad_(False)
        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=lora.target_modules)
        with peft_wrapping():
            backbone = get_peft_model(backbone, config)
    else:
        backbone.requires_grad_(True)
    critic = ValueModel(backbone, hidden_size, seed=seed)
    device = next(policy.parameters()).device
    critic.to(device)
    critic.eval()
    return critic


def shard_critic(critic: ValueModel, mesh) -> None:
    """FSDP2 ``fully_shard`` of a critic: each decoder layer, the float32 value head on its own (one
    dtype per parameter group), then the critic as the root. Its gradients are then averaged over
    the data-parallel ranks like the policies' (``training/sharding.py``)."""
    from torch.distributed.fsdp import fully_shard

    backbone = critic.backbone.get_base_model() if hasattr(critic.backbone, "get_base_model") else critic.backbone
    for layer in getattr(backbone, "layers", []):
        fully_shard(layer, mesh=mesh)
    fully_shard(critic.value_head, mesh=mesh)
    fully_shard(critic, mesh=mesh)
