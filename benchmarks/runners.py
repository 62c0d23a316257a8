"""One GRPO-style RL run on the equal-work shapes, by three implementations, with step hooks.

Work per step (perf-anchors §3): 2 prompts x 4 completions = 8 sampled completions of at most 64
tokens (T=1, top_p=1, top_k=0), reference model on (beta), one policy forward+backward, gradient
clip 1.0 and one AdamW step (lr 1e-4). Each runner calls ``hooks.begin()`` / ``hooks.end(tokens)``
around every step, where ``tokens`` is the number of generated tokens (EOS included), and records
``hooks.params`` = (parameters its optimizer updates, parameters of the policy).

Sizes with LoRA settings in ``common.LORA`` (smollm2) train a fresh LoRA adapter (r 16, alpha 32,
all linear layers, no dropout) in every implementation, and the reference policy is the base with
the adapter disabled (no second model): waltzlit via ``AgentConfig(lora=LoRAConfig(...))``, TRL
via ``GRPOTrainer(peft_config=peft.LoraConfig(...))`` (it then sets ``ref_model = None`` and runs
the reference forward under ``disable_adapter()``), the bare loop via ``peft.get_peft_model`` and
``with policy.disable_adapter():``. A LoRA runner fails if its optimizer holds any non-LoRA weight.

- ``run_waltzlit``: a Lightning ``Trainer`` fitting ``WaltzModule(feedback=None)`` (single-agent
  GRPO, k3 KL in the loss, token-mean); a callback brackets ``training_step`` (the real code path,
  TensorBoard logging included, as in a normal run).
- ``run_trl``: TRL's ``GRPOTrainer`` exactly as in perf-anchors §3 (fp32, no gradient
  checkpointing); a ``TrainerCallback`` brackets on_step_begin..on_step_end.
- ``run_bare``: plain PyTorch + HF ``generate`` (one batched generate, old and reference
  log-probs, one backward and optimizer step).
"""

from __future__ import annotations

import tempfile
import time

import torch
from common import LORA, model_dir, size_prompts  # benchmarks/common.py (scripts run from benchmarks/ on sys.path)

PROMPTS_PER_STEP, COMPLETIONS, MAX_NEW, LR = 2, 4, 64, 1e-4
BF16 = False
"""bf16 autocast with fp32 weights in every runner (waltzlit ``precision: bf16-mixed``, TRL
``bf16=True``, the bare loop under ``torch.autocast``); set by ``equal_work.py --precision``."""
DEVICE = "cpu"
"""Where every runner trains (``equal_work.py --device``): "cpu" or "cuda"."""


class Hooks:
    """Default hooks: record (seconds, generated tokens) per step."""

    def __init__(self) -> None:
        self.steps: list[tuple[float, int]] = []
        self.stages: list[dict[str, float]] = []  # waltzlit only: its time/<stage> scalars per step
        self.params: tuple[int, int] | None = None  # (updated by the optimizer, policy total)
        self._start = 0.0

    def begin(self) -> None:
        self._start = time.perf_counter()

    def end(self, tokens: int) -> None:
        self.steps.append((time.perf_counter() - self._start, tokens))

    def finish(self) -> None:
        pass


def peft_config(size: str):
    """peft's ``LoraConfig`` for ``size`` (TRL and the bare loop), or None when it trains all weights."""
    if size not in LORA:
        return None
    from peft import LoraConfig

    lora = LORA[size]
    return LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                      target_modules=lora["target_modules"], task_type="CAUSAL_LM")


def record_params(hooks: Hooks, size: str, optimizers, policy) -> None:
    """``hooks.params`` from the optimizers' parameters; with LoRA, check that they are adapter weights only."""
    names = {id(p): n for n, p in policy.named_parameters()}
    trained = {id(p): p for opt in optimizers for group in opt.param_groups for p in group["params"]}
    hooks.params = (sum(p.numel() for p in trained.values()), sum(p.numel() for p in policy.parameters()))
    if size in LORA:
        others = [names.get(i, "<not in the policy>") for i in trained if "lora_" not in names.get(i, "")]
        if others or not trained:
            raise RuntimeError(f"{size} should train LoRA adapters only; the optimizer also holds {others[:3]}")
    print(f"[{size}] trains {hooks.params[0]:,} of {hooks.params[1]:,} policy parameters", flush=True)


# ----------------------------------------------------------------------------- waltzlit
def waltzlit_module(size: str, beta: float, steps: int):
    from waltzlit.config import AgentConfig, AlgorithmConfig, LoRAConfig, RolloutConfig, SamplingConfig, ScheduleConfig
    from waltzlit.training.module import WaltzModule

    folder = str(model_dir(size))
    lora = LoRAConfig(**LORA[size]) if size in LORA else None
    agent = AgentConfig(model=folder, tokenizer=folder, system_prompt="", lr=LR, betas=(0.9, 0.999), lora=lora)
    sampling = SamplingConfig(max_new_tokens=MAX_NEW, temperature=1.0, top_p=1.0, top_k=0)
    return WaltzModule(
        conversation=agent,
        feedback=None,
        rollout=RolloutConfig(conversation=sampling, generation_batch_size=PROMPTS_PER_STEP * COMPLETIONS),
        algorithm=AlgorithmConfig(advantage_estimator="grpo", samples_per_prompt=COMPLETIONS, kl_coef=beta,
                                  kl_placement="loss", kl_estimator="k3", loss_aggregation="token-mean",
                                  micro_batch_size=PROMPTS_PER_STEP * COMPLETIONS),
        schedule=ScheduleConfig(total_rl_steps=steps, stage1_steps=0, log_transcripts_every=0),
    )


def run_waltzlit(size: str, beta: float, steps: int, hooks: Hooks) -> None:
    from lightning.pytorch import Callback, LightningDataModule, Trainer
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.data import DataLoader

    from waltzlit.types import PromptRecord

    records = [PromptRecord(p, False, "bench") for p in size_prompts(size)]
    records = records * (-(-steps * PROMPTS_PER_STEP // len(records)))

    class Prompts(LightningDataModule):  # records stay on the CPU, as PromptDataModule keeps them
        def train_dataloader(self):
            return DataLoader(records, batch_size=PROMPTS_PER_STEP, collate_fn=list)

        def transfer_batch_to_device(self, batch, device, dataloader_idx):
            return batch

    class StepTimer(Callback):
        def on_train_start(self, trainer, module):
            record_params(hooks, size, trainer.optimizers, module.agents["conversation"].model)

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            hooks.begin()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            metrics = trainer.callback_metrics
            length = float(metrics["train/conversation/response_length"])
            hooks.end(round(length * PROMPTS_PER_STEP * COMPLETIONS))
            hooks.stages.append({k[5:]: float(v) for k, v in metrics.items() if k.startswith("time/")})

    with tempfile.TemporaryDirectory() as logs:
        trainer = Trainer(
            accelerator=DEVICE, devices=1, max_epochs=-1, logger=TensorBoardLogger(logs, name="bench"),
            precision="bf16-mixed" if BF16 else "32-true",
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, log_every_n_steps=1, callbacks=[StepTimer()], default_root_dir=logs,
        )
        trainer.fit(waltzlit_module(size, beta, steps), datamodule=Prompts())
    hooks.finish()


# ----------------------------------------------------------------------------- TRL
def length_reward(completions, **kwargs) -> list[float]:
    return [min(len(c[0]["content"] if isinstance(c, list) else c), 256) / 256 for c in completions]


def run_trl(size: str, beta: float, steps: int, hooks: Hooks) -> None:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    rows = [{"prompt": [{"role": "user", "content": p}]} for p in size_prompts(size)]
    lengths: list[float] = []

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
            record_params(hooks, size, [optimizer], model)

        def on_step_begin(self, args, state, control, **kwargs):
            hooks.begin()

        def on_step_end(self, args, state, control, **kwargs):
            hooks.end(0)  # tokens filled in from the step's logged mean length below

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    with tempfile.TemporaryDirectory() as out:
        cfg = GRPOConfig(output_dir=out, per_device_train_batch_size=PROMPTS_PER_STEP * COMPLETIONS,
                         num_generations=COMPLETIONS, max_completion_length=MAX_NEW, beta=beta, learning_rate=LR,
                         report_to="none", use_cpu=DEVICE == "cpu", logging_steps=1, max_steps=steps, save_strategy="no",
                         seed=0, dataloader_num_workers=0, disable_tqdm=True, bf16=BF16,
                         gradient_checkpointing=False)
        # With a peft_config TRL wraps the loaded model in get_peft_model and keeps no ref_model: the
        # reference log-probs come from the same model under disable_adapter().
        trainer = GRPOTrainer(model=str(model_dir(size)), reward_funcs=length_reward, args=cfg,
                              train_dataset=Dataset.from_list(rows), callbacks=[StepTimer()],
                              peft_config=peft_config(size))
        trainer.train()
    # TRL's mean_length counts completion tokens (EOS included), as the other runners do.
    hooks.steps = [(s, round(n * PROMPTS_PER_STEP * COMPLETIONS)) for (s, _), n in zip(hooks.steps, lengths)]
    hooks.finish()


# ----------------------------------------------------------------------------- bare loop
def _logps(model, ids, attention, n):
    logits = model(input_ids=ids, attention_mask=attention, logits_to_keep=n + 1).logits[:, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, -n:, None]).squeeze(-1)


def run_bare(size: str, beta: float, steps: int, hooks: Hooks, old_forward: bool = True) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder = str(model_dir(size))
    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    lora = peft_config(size)
    if lora is not None:  # the reference is then the base with the adapter disabled (see _bare_step)
        from peft import get_peft_model

        policy = get_peft_model(policy, lora)
        ref = None
    else:
        ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval().requires_grad_(False) \
            if beta > 0 else None
    policy.to(DEVICE).eval()
    ref = ref.to(DEVICE) if ref is not None else None
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR)
    record_params(hooks, size, [optimizer], policy)
    gen = GenerationConfig(max_new_tokens=MAX_NEW, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                           pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    texts = size_prompts(size)
    for step in range(steps):
        hooks.begin()
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=BF16):
            tokens = _bare_step(policy, ref, tok, gen, optimizer, params, texts, step, beta, old_forward)
        hooks.end(tokens)
    hooks.finish()


def _bare_step(policy, ref, tok, gen, optimizer, params, texts, step, beta, old_forward) -> int:
    """One RL step of the bare loop; returns the generated tokens (EOS included).

    ``ref`` None with ``beta`` > 0 means a LoRA policy whose reference is its adapter-disabled base."""
    chats = [[{"role": "user", "content": texts[(step * PROMPTS_PER_STEP + i) % len(texts)]}]
             for i in range(PROMPTS_PER_STEP) for _ in range(COMPLETIONS)]
    enc = tok.apply_chat_template(chats, add_generation_prompt=True, padding=True, return_dict=True,
                                  return_tensors="pt").to(policy.device)
    with torch.no_grad():
        out = policy.generate(**enc, generation_config=gen)
    width = enc["input_ids"].shape[1]
    completion = out[:, width:]
    n = completion.shape[1]
    is_eos = completion == tok.eos_token_id
    first = torch.where(is_eos.any(1), is_eos.int().argmax(1), torch.full((len(out),), n, device=out.device))
    mask = (torch.arange(n, device=out.device)[None] <= first[:, None]).float()  # up to and including the first EOS
    attention = torch.cat([enc["attention_mask"], mask.long()], 1)
    with torch.no_grad():
        old = _logps(policy, out, attention, n) if old_forward else None
        if beta <= 0:
            ref_lp = None
        elif ref is not None:
            ref_lp = _logps(ref, out, attention, n)
        else:
            with policy.disable_adapter():
                ref_lp = _logps(policy, out, attention, n)
    rewards = torch.tensor([min(len(tok.decode(c, skip_special_tokens=True)), 256) / 256 for c in completion],
                           device=out.device)
    grouped = rewards.view(-1, COMPLETIONS)
    adv = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).view(-1, 1)
    policy.train()
    lp = _logps(policy, out, attention, n)
    old_lp = old if old is not None else lp.detach()
    ratio = torch.exp(lp - old_lp)
    per_token = -torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv)
    if ref_lp is not None:
        per_token = per_token + beta * (torch.exp(ref_lp - lp) - (ref_lp - lp) - 1)
    loss = (per_token * mask).sum() / mask.sum()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad()
    policy.eval()
    return int(mask.sum())


RUNNERS = {"waltzlit": run_waltzlit, "trl": run_trl, "bare": run_bare}
