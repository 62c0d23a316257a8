"""waltzlit/memory_plan.py: parameter counts, bytes per part and sharding, checked by hand and
against published figures (Llama-3.1-8B's 8.03B parameters, peft's 41.9M LoRA parameters, the
128 KiB-per-token KV cache, ZeRO's 16 bytes per parameter)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from waltzlit.memory_plan import (
    GIB,
    KNOWN_ARCHITECTURES,
    NF4_BYTES_PER_WEIGHT,
    AgentPlan,
    Architecture,
    Workload,
    estimate,
    smallest_world_size,
)

LLAMA_8B = KNOWN_ARCHITECTURES["meta-llama/Llama-3.1-8B-Instruct"]


def parts(plan) -> dict[str, float]:
    return {name: nbytes for _, name, nbytes in plan.parts}


def test_llama_8b_parameter_count_is_the_published_one():
    # embeddings 128256*4096 = 525,336,576, twice (untied LM head) = 1,050,673,152
    # per layer: q, o 4096*4096 = 16,777,216 each; k, v 4096*1024 = 4,194,304 each;
    #   gate, up, down 4096*14336 = 58,720,256 each; norms 2*4096   -> 218,112,000
    # 32 layers = 6,979,584,000; + final norm 4096 + embeddings      -> 8,030,261,248
    assert LLAMA_8B.parameters == 8_030_261_248


def test_lora_all_linear_r16_on_llama_8b():
    # r*(in+out) per projection: q 16*8192, k 16*5120, v 16*5120, o 16*8192,
    #   gate, up, down 16*18432 each = 131072*2 + 81920*2 + 294912*3 = 1,310,720 per layer
    # x 32 layers = 41,943,040 (what peft prints for Llama-3-8B, r=16, all linear layers)
    assert LLAMA_8B.lora_parameters(16, "all-linear") == 41_943_040
    # q and v only: (131072 + 81920) * 32 = 6,815,744
    assert LLAMA_8B.lora_parameters(16, ["q_proj", "v_proj"]) == 6_815_744


def test_kv_cache_is_128_kib_per_token_for_llama_8b_in_bf16():
    # 2 (K and V) * 32 layers * 8 kv heads * 128 dims * 2 bytes = 131,072 bytes per token
    agent = AgentPlan(LLAMA_8B)
    work = Workload({"conversation": agent}, precision="bf16-mixed", generation_batch_size=2,
                    max_prompt_tokens=100, max_new_tokens=28)
    kv = [b for phase, _, b in estimate(work).parts if phase == "generation"]
    assert kv == [131_072 * 2 * 128]


def test_zero3_figure_of_16_bytes_per_parameter_over_64_devices():
    # ZeRO (Rajbhandari et al. 2020, fig. 1): a 7.5B model with mixed-precision Adam holds 16 bytes per
    # parameter, 120 GB, and ZeRO stage 3 over 64 devices holds 120/64 = 1.875 GB per device.
    # Here: fp32 masters 4 + AdamW moments 8 (static) + fp32 gradients 4 (update), each / 64.
    arch = Architecture(4096, 36, 32, 32, 16384, 50000)
    psi = arch.parameters
    agent = AgentPlan(arch, needs_reference=False)
    work = Workload({"conversation": agent}, precision="bf16-mixed", world_size=64, sharded=True,
                    generation_batch_size=0, max_prompt_tokens=1, max_new_tokens=1, micro_batch_size=1)
    by_name = parts(estimate(work))
    states = (by_name["conversation: master weights (fp32)"] + by_name["conversation: AdamW states (2 moments)"]
              + by_name["conversation: gradients"])
    assert states == pytest.approx(16 * psi / 64)
    # the bf16 compute copy under FSDP2 is two all-gathered layers, not the model
    assert by_name["conversation: bf16 compute copy"] == 2 * arch.layer_linear_parameters * 2


def test_unsharded_mixed_precision_keeps_an_autocast_copy_of_the_trained_weights():
    # autocast caches the bf16 cast of every trained leaf weight for the forward and backward: 2 bytes each
    agent = AgentPlan(LLAMA_8B, needs_reference=False)
    by_name = parts(estimate(Workload({"conversation": agent}, precision="bf16-mixed")))
    assert by_name["conversation: bf16 compute copy"] == 2 * LLAMA_8B.parameters
    assert by_name["conversation: master weights (fp32)"] == 4 * LLAMA_8B.parameters
    pure = parts(estimate(Workload({"conversation": agent}, precision="bf16-true")))
    assert pure["conversation: weights (2-byte)"] == 2 * LLAMA_8B.parameters
    assert "conversation: bf16 compute copy" not in pure


def test_shared_base_qlora_holds_one_4bit_base_and_two_adapters():
    agent = AgentPlan(LLAMA_8B, dtype="bfloat16", lora_r=16, load_in_4bit=True)
    by_name = parts(estimate(Workload({"conversation": agent, "feedback": agent}, memory_mode="shared_base",
                                      precision="bf16-mixed")))
    quantized = 32 * LLAMA_8B.layer_linear_parameters  # 6,979,321,856 projection weights in NF4
    # NF4 0.5 byte + 1 byte per 64 (8-bit block scales) + 4 bytes per 64*256 (fp32 scale of scales)
    assert NF4_BYTES_PER_WEIGHT == pytest.approx(0.5 + 0.015625 + 0.000244140625)
    base = quantized * NF4_BYTES_PER_WEIGHT + (LLAMA_8B.parameters - quantized) * 2
    assert by_name["conversation: base weights (frozen, 4-bit)"] == pytest.approx(base)
    assert not any(name.startswith("feedback: base") for name in by_name)  # one base for both
    assert by_name["feedback: LoRA adapters (fp32)"] == 41_943_040 * 4
    assert by_name["feedback: AdamW states (2 moments)"] == 41_943_040 * 8
    assert not any("reference" in name for name in by_name)  # the adapter-disabled base is the reference


def test_peak_is_static_plus_the_larger_phase():
    agent = AgentPlan(LLAMA_8B)
    plan = estimate(Workload({"conversation": agent, "feedback": agent}, precision="bf16-mixed"))
    static, gen, upd = (plan.total(p) for p in ("static", "generation", "update"))
    assert plan.peak_bytes == static + max(gen, upd)
    # the paper's separate full fine-tuning: 2 x (4 master + 4 reference + 8 AdamW) bytes per parameter
    assert static == pytest.approx(32 * LLAMA_8B.parameters)


def test_sharding_divides_model_state_but_not_per_rank_parts():
    agent = AgentPlan(LLAMA_8B)
    one = parts(estimate(Workload({"conversation": agent}, precision="bf16-mixed")))
    eight = parts(estimate(Workload({"conversation": agent}, precision="bf16-mixed", world_size=8, sharded=True)))
    assert eight["conversation: reference (frozen copy)"] == one["conversation: reference (frozen copy)"] / 8
    assert eight["conversation: activations (micro-batch 4)"] == one["conversation: activations (micro-batch 4)"]
    assert [k for k in eight if k.startswith("KV")] == [k for k in one if k.startswith("KV")]


def test_activation_checkpointing_keeps_layer_inputs_and_one_layer():
    arch = Architecture(64, 4, 4, 2, 128, 100)  # kv width 2*16 = 32
    agent = AgentPlan(arch, needs_reference=False)
    base = Workload({"conversation": agent}, micro_batch_size=1, max_prompt_tokens=6, max_new_tokens=4)
    # per layer and token (fp32): (7*64 + 2*32 + 4*128) * 4 + 2*2*64*4 = 1024*4 + 1024 = 5120 bytes
    full = parts(estimate(base))["conversation: activations (micro-batch 1)"]
    assert full == 10 * 4 * 5120  # 10 tokens, 4 layers
    kept = parts(estimate(replace(base, gradient_checkpointing=True)))["conversation: activations (micro-batch 1)"]
    assert kept == 10 * (4 * 64 * 4 + 5120)


def test_smallest_world_size_is_the_first_power_of_two_that_fits():
    agent = AgentPlan(LLAMA_8B)
    work = Workload({"conversation": agent, "feedback": agent}, precision="bf16-mixed", gradient_checkpointing=True)
    size = smallest_world_size(work, 80 * GIB)
    assert size is not None and size > 1
    assert estimate(replace(work, world_size=size, sharded=True)).peak_gib <= 80
    assert estimate(replace(work, world_size=size // 2, sharded=True)).peak_gib > 80
