"""Estimated memory per device of a WaltzRL run, before anything is loaded (``python -m waltzlit plan``).

The estimate is a sum of named parts, each a count of tensors times their bytes, so that a user can
see *what* does not fit and which setting moves it:

* **static** (held for the whole run): each agent's stored weights (fp32 masters under a mixed
  precision, or the only copy), frozen references (``separate`` full fine-tuning), a 4-bit base
  (0.5 byte per quantized weight plus NF4 double-quantization scales), the merged LoRA sampling copy,
  both agents' AdamW states (two moments in the parameters' dtype), critics (PPO) and a local judge;
* **generation** (rollout): the KV cache of ``generation_batch_size`` sequences of
  ``max_prompt_tokens + max_new_tokens`` tokens;
* **update** (one agent at a time; gradients are freed after each optimizer step): that agent's
  gradients, the bf16 compute copy of its trained weights (autocast caches the casts of leaf
  weights for the whole forward and backward; under FSDP2 mixed precision only the two layers
  being all-gathered), the activations of one micro-batch (every layer's saved tensors, or only each
  layer's input plus one layer with activation checkpointing) and the response logits in fp32.

The peak is static + max(generation, update). Sharding (FSDP2 over ``world_size`` ranks) divides
every part held by the policies, references and optimizers; the KV cache, activations and a judge
are per rank. Formulas: ZeRO (Rajbhandari et al., 2020, §3.1) for the 16 bytes per parameter of
mixed-precision AdamW; activation counts after Korthikanti et al. (2022, §4), written for a Llama
block with a gated MLP and grouped-query attention run by a fused (flash / SDPA) kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
NF4_BYTES_PER_WEIGHT = 0.5 + 1 / 64 + 4 / (64 * 256)
"""NF4 with double quantization: 4 bits per weight, an 8-bit scale per 64 weights and an fp32
scale of scales per 256 blocks (QLoRA, Dettmers et al., 2023, §3)."""
LORA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Architecture:
    """The shape of a Llama-style decoder (the fields of its transformers config)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool = False
    head_dim: int | None = None

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def kv_width(self) -> int:
        """Width of the K (or V) projection: key/value heads times head size."""
        return self.num_key_value_heads * self.head_size

    @property
    def q_width(self) -> int:
        return self.num_attention_heads * self.head_size

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection of one decoder layer."""
        h, i = self.hidden_size, self.intermediate_size
        return {"q_proj": (h, self.q_width), "k_proj": (h, self.kv_width), "v_proj": (h, self.kv_width),
                "o_proj": (self.q_width, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def layer_linear_parameters(self) -> int:
        return sum(a * b for a, b in self.linear_shapes().values())

    @property
    def embedding_parameters(self) -> int:
        """Input embedding plus the LM head when it is not tied to it."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    @property
    def parameters(self) -> int:
        """All weights: projections, two RMSNorm gains per layer and the final norm, embeddings."""
        per_layer = self.layer_linear_parameters + 2 * self.hidden_size
        return self.num_hidden_layers * per_layer + self.hidden_size + self.embedding_parameters

    def lora_parameters(self, r: int, target_modules: str | list[str]) -> int:
        """Adapter weights: r * (in + out) per adapted projection (A is r x in, B is out x r)."""
        targets = LORA_LINEARS if target_modules == "all-linear" else [t for t in target_modules if t in LORA_LINEARS]
        shapes = self.linear_shapes()
        return self.num_hidden_layers * sum(r * sum(shapes[t]) for t in targets)


@dataclass(frozen=True)
class AgentPlan:
    """What one agent holds and trains."""

    architecture: Architecture
    dtype: str = "float32"
    """Stored dtype of the weights (before a ``-true`` precision converts them)."""
    lora_r: int | None = None
    lora_targets: str | list[str] = "all-linear"
    load_in_4bit: bool = False
    needs_reference: bool = True
    merged_sampler_dtype: str | None = None
    """dtype of the merged LoRA sampling copy, None without one."""
    critic: bool = False
    trained: bool = True


@dataclass(frozen=True)
class Workload:
    """The run around the agents: precision, sharding and the sizes of rollout and update."""

    agents: dict[str, AgentPlan]
    precision: str = "32-true"
    """Lightning's ``trainer.precision``."""
    memory_mode: str = "separate"
    world_size: int = 1
    sharded: bool = False
    """FSDP2 over ``world_size`` ranks (else every rank holds everything)."""
    generation_batch_size: int = 32
    rollout_rows: int | None = None
    """Sequences one RL step generates in total (prompts x samples); a sharded rank generates its
    share, at most ``generation_batch_size`` at once. None: ``generation_batch_size``."""
    max_prompt_tokens: int = 4096
    max_new_tokens: int = 512
    micro_batch_size: int = 4
    gradient_checkpointing: bool = False
    judge_parameters: int = 0
    """Weights of a judge model loaded on every rank (bf16); 0 for rule or HTTP judges."""


@dataclass
class MemoryPlan:
    """Bytes per device by part; ``phase`` of each part is static, generation or update."""

    parts: list[tuple[str, str, float]] = field(default_factory=list)

    def add(self, phase: str, name: str, nbytes: float) -> None:
        if nbytes > 0:
            self.parts.append((phase, name, float(nbytes)))

    def total(self, phase: str) -> float:
        return sum(b for p, _, b in self.parts if p == phase)

    @property
    def peak_bytes(self) -> float:
        return self.total("static") + max(self.total("generation"), self.total("update"))

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / GIB


TRUE_HALF_PRECISIONS = {"bf16-true": "bfloat16", "16-true": "float16"}
"""Lightning precisions that convert the whole module, with the dtype the weights are then stored in."""
_PRECISION_ALIASES = {"bf16": "bf16-mixed", "16": "16-mixed", "32": "32-true", "64": "64-true"}


def normalise_precision(precision: str | int | None) -> str:
    """Lightning's precision string in its long form ("bf16" is "bf16-mixed", 32 is "32-true")."""
    text = str(precision or "32-true")
    return _PRECISION_ALIASES.get(text, text)


def stored_dtype(precision: str, dtype: str) -> str:
    """The dtype the weights live in: a ``-true`` half precision converts the module, else ``dtype``."""
    return TRUE_HALF_PRECISIONS.get(normalise_precision(precision), dtype)


def compute_dtype_bytes(precision: str, stored_bytes: int) -> int:
    """Bytes of an activation: bf16/fp16 under a mixed or true half precision, else the weights'."""
    return 2 if normalise_precision(precision).startswith(("bf16", "16")) else stored_bytes


def layer_activation_elements(arch: Architecture) -> int:
    """Saved tensors of one decoder layer per token (elements), fused attention (no s x s scores):
    residual input, two norm outputs, q, k, v, attention output, o-proj output, MLP gate, up,
    activated gate and their product (7h + 2 kv + 4 i)."""
    return 7 * arch.hidden_size + 2 * arch.kv_width + 4 * arch.intermediate_size


def estimate(work: Workload) -> MemoryPlan:
    """Bytes per device of each part of ``work`` (see the module docstring)."""
    plan = MemoryPlan()
    shard = work.world_size if work.sharded else 1
    mixed = normalise_precision(work.precision).endswith("-mixed")
    update_peaks, kv_per_token = [], []
    shared_base_done = False
    for role, agent in work.agents.items():
        arch = agent.architecture
        stored = DTYPE_BYTES[stored_dtype(work.precision, agent.dtype)]
        compute = compute_dtype_bytes(work.precision, stored)
        kv_per_token.append(2 * arch.num_hidden_layers * arch.kv_width * compute)  # K and V, every layer
        total = arch.parameters
        if agent.lora_r:
            trainable = arch.lora_parameters(agent.lora_r, agent.lora_targets)
            quantized = arch.num_hidden_layers * arch.layer_linear_parameters if agent.load_in_4bit else 0
            base = quantized * NF4_BYTES_PER_WEIGHT + (total - quantized) * stored
            if work.memory_mode == "shared_base" and shared_base_done:
                base = 0  # one base serves both agents (and is the reference of both)
            shared_base_done = shared_base_done or work.memory_mode == "shared_base"
            plan.add("static", f"{role}: base weights (frozen{', 4-bit' if agent.load_in_4bit else ''})", base / shard)
            # peft keeps adapters in fp32 when the base is half precision (autocast_adapter_dtype)
            adapter_bytes = 4
            plan.add("static", f"{role}: LoRA adapters (fp32)", trainable * adapter_bytes / shard)
            if agent.merged_sampler_dtype:
                plan.add("static", f"{role}: merged sampling copy", total * DTYPE_BYTES[agent.merged_sampler_dtype])
        else:
            trainable, adapter_bytes = total, stored
            label = "master weights (fp32)" if mixed and stored == 4 else f"weights ({stored}-byte)"
            plan.add("static", f"{role}: {label}", total * stored / shard)
            if agent.needs_reference:
                plan.add("static", f"{role}: reference (frozen copy)", total * stored / shard)
        if not agent.trained:
            continue
        plan.add("static", f"{role}: AdamW states (2 moments)", 2 * trainable * adapter_bytes / shard)
        if agent.critic:  # a copy of the backbone (no LM head) with a value head, trained like the policy
            backbone = total - (0 if arch.tie_word_embeddings else arch.vocab_size * arch.hidden_size)
            critic_trained = trainable if agent.lora_r else backbone
            plan.add("static", f"{role}: critic (weights + AdamW)",
                     (backbone * stored + 2 * critic_trained * adapter_bytes) / shard)
        # the update of this agent (one at a time)
        tokens = work.micro_batch_size * (work.max_prompt_tokens + work.max_new_tokens)
        per_layer = layer_activation_elements(arch) * compute + 2 * 2 * arch.hidden_size * 4  # + fp32 RMSNorm internals
        if work.gradient_checkpointing:
            activations = tokens * (arch.num_hidden_layers * arch.hidden_size * compute + per_layer)
        else:
            activations = tokens * arch.num_hidden_layers * per_layer
        # logits of the response tokens: compute dtype, fp32 copy, log-softmax and its gradient
        logits = work.micro_batch_size * work.max_new_tokens * arch.vocab_size * (compute + 3 * 4)
        if mixed and work.sharded:
            layer = arch.layer_linear_parameters if not agent.lora_r else 0
            compute_copy = 2 * layer * compute  # the all-gathered layer and the prefetched next one
        elif mixed:
            compute_copy = trainable * compute if not agent.lora_r else 0
        else:
            compute_copy = 0
        update_peaks.append((role, trainable * adapter_bytes / shard, compute_copy, activations, logits))
    if update_peaks:
        role, grads, copy, activations, logits = max(update_peaks, key=lambda p: sum(p[1:]))
        plan.add("update", f"{role}: gradients", grads)
        plan.add("update", f"{role}: bf16 compute copy", copy)
        plan.add("update", f"{role}: activations (micro-batch {work.micro_batch_size})", activations)
        plan.add("update", f"{role}: response logits", logits)
    kv = max(kv_per_token)
    rows = work.generation_batch_size
    if work.rollout_rows is not None:
        rows = min(rows, -(-work.rollout_rows // shard))
    plan.add("generation", f"KV cache ({rows} x {work.max_prompt_tokens + work.max_new_tokens} tokens)",
             kv * rows * (work.max_prompt_tokens + work.max_new_tokens))
    plan.add("static", "judge model (bf16)", work.judge_parameters * 2)
    return plan


def smallest_world_size(work: Workload, device_bytes: float, limit: int = 1024) -> int | None:
    """The fewest FSDP2 ranks (powers of two) whose per-device peak fits ``device_bytes``."""
    from dataclasses import replace

    size = 1
    while size <= limit:
        if estimate(replace(work, world_size=size, sharded=size > 1 or work.sharded)).peak_bytes <= device_bytes:
            return size
        size *= 2
    return None


KNOWN_ARCHITECTURES: dict[str, Architecture] = {
    # from each model's published config.json, so that a plan needs no download
    "meta-llama/Llama-3.1-8B-Instruct": Architecture(4096, 32, 32, 8, 14336, 128256),
    "meta-llama/Llama-3.1-70B-Instruct": Architecture(8192, 80, 64, 8, 28672, 128256),
    "meta-llama/Llama-3.2-1B-Instruct": Architecture(2048, 16, 32, 8, 8192, 128256, tie_word_embeddings=True),
    "meta-llama/Llama-3.2-3B-Instruct": Architecture(3072, 28, 24, 8, 8192, 128256, tie_word_embeddings=True),
    "HuggingFaceTB/SmolLM2-135M-Instruct": Architecture(576, 30, 9, 3, 1536, 49152, tie_word_embeddings=True),
    "HuggingFaceTB/SmolLM2-1.7B-Instruct": Architecture(2048, 24, 32, 32, 8192, 49152, tie_word_embeddings=True),
    "Qwen/Qwen2.5-7B-Instruct": Architecture(3584, 28, 28, 4, 18944, 152064),
}


def architecture_from_config(config: dict) -> Architecture:
    """An :class:`Architecture` from a transformers config dict (``config.json`` or ``model_config``)."""
    hidden = config["hidden_size"]
    heads = config.get("num_attention_heads", max(1, hidden // 64))
    return Architecture(
        hidden_size=hidden,
        num_hidden_layers=config["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=config.get("num_key_value_heads") or heads,
        intermediate_size=config.get("intermediate_size", 4 * hidden),
        vocab_size=config["vocab_size"],
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        head_dim=config.get("head_dim"),
    )


KNOWN_JUDGE_PARAMETERS: dict[str, int] = {
    "allenai/wildguard": 7_248_023_552,  # Mistral-7B-v0.3
    "meta-llama/Llama-Guard-3-8B": 8_030_261_248,
    "meta-llama/Llama-Guard-4-12B": 12_000_000_000,  # approximate (model card: 12B)
}
