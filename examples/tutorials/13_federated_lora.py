"""Tutorial 13: federated LoRA on a small causal language model, FedAvg and FedMut on the adapters only.

A Llama-style model built from a config (no download) is first trained centrally on sentences of a generated
grammar (the "pretrained base"); then 8 clients, each writing mostly about one topic in a new sentence form,
fine-tune LoRA adapters on it with FedAvg and FedMut, federating the adapters alone (``adapter_policy``). A third
run federates the whole model with FedAvg, for the sizes: the server's state and a checkpoint, against the
adapters'. Perplexity on the clients' held-out sentences before and after.

Run:  python examples/tutorials/13_federated_lora.py                   (about 3 minutes on a CPU)
      FEDMUT_EXAMPLE_SMALL=1 python examples/tutorials/13_federated_lora.py   (a few rounds, as CI runs it)
Writes:  table.md to $FEDMUT_OUTPUT_DIR (default outputs/13_federated_lora), the adapters of the last round
         (``last-adapters/``, peft's ``save_pretrained`` format) beside it.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import LightningModule
from peft import LoraConfig, PeftModel, get_peft_model
from torch.utils.data import DataLoader, TensorDataset
from transformers import LlamaConfig, LlamaForCausalLM

from lightning_fedmut import FederatedLoop, make_clients
from lightning_fedmut.adapters import adapter_policy
from lightning_fedmut.algorithms import FedAvg, FedMut
from lightning_fedmut.callbacks import GlobalModelCheckpoint

SMALL = os.environ.get("FEDMUT_EXAMPLE_SMALL", "") not in ("", "0")
OUTPUT = Path(os.environ.get("FEDMUT_OUTPUT_DIR", "outputs/13_federated_lora"))
ROUNDS = 2 if SMALL else 12
PRETRAIN_STEPS = 20 if SMALL else 400
SEQ = 24
#: bf16 autocast where the device has it (recent GPUs, and CPUs); the weights stay float32.
PRECISION = "bf16-mixed" if not torch.cuda.is_available() or torch.cuda.is_bf16_supported() else "32-true"

# --8<-- [start:corpus]
TOPICS = {
    "kitchen": (["cook", "pan", "soup", "knife", "oven"], ["stirs", "heats", "cuts", "tastes"], ["hot", "salty"]),
    "garden": (["gardener", "rose", "spade", "hedge", "seed"], ["waters", "plants", "trims", "digs"], ["green", "wild"]),
    "harbor": (["sailor", "boat", "rope", "crane", "wave"], ["ties", "loads", "steers", "lifts"], ["wet", "heavy"]),
    "school": (["teacher", "pupil", "book", "chalk", "desk"], ["reads", "writes", "teaches", "marks"], ["quiet", "old"]),
}
WORDS = sorted({w for nouns, verbs, adjs in TOPICS.values() for w in nouns + verbs + adjs}
               | {"the", "a", "and", "then", "very", "."})
VOCAB = ["<pad>", "<bos>", *WORDS]
INDEX = {w: i for i, w in enumerate(VOCAB)}


def sentence(topic: str, form: int, g: torch.Generator) -> list[str]:
    """One sentence about ``topic``: form 0 is the base's ("the hot cook stirs a pan ."), form 1 the clients'
    ("a pan the cook stirs then very salty .")."""
    nouns, verbs, adjs = TOPICS[topic]

    def pick(xs: list[str]) -> str:
        return xs[int(torch.randint(len(xs), (1,), generator=g))]

    if form == 0:
        return [pick(["the", "a"]), pick(adjs), pick(nouns), pick(verbs), pick(["the", "a"]), pick(nouns), "."]
    return ["a", pick(nouns), "the", pick(nouns), pick(verbs), "then", "very", pick(adjs), "."]


def corpus(topics: list[str], form: int, sequences: int, seed: int) -> torch.Tensor:
    """``sequences`` rows of SEQ token ids: sentences of ``topics`` (drawn uniformly), packed after a <bos>."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(sequences):
        ids = [INDEX["<bos>"]]
        while len(ids) < SEQ:
            ids += [INDEX[w] for w in sentence(topics[int(torch.randint(len(topics), (1,), generator=g))], form, g)]
        rows.append(ids[:SEQ])
    return torch.tensor(rows)
# --8<-- [end:corpus]


# --8<-- [start:model]
def llama_config() -> LlamaConfig:
    """A small Llama: 4 blocks of width 128, a word-level vocabulary."""
    return LlamaConfig(vocab_size=len(VOCAB), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=SEQ,
                       pad_token_id=0, bos_token_id=1, eos_token_id=None)


def base_model(seed: int = 0) -> LlamaForCausalLM:
    """The pretrained base: a small Llama from a config, trained centrally on form-0 sentences of every topic.

    Deterministic (seeded, one thread): building it again gives the same weights, as resuming a run needs.
    """
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config())
    data = corpus(list(TOPICS), form=0, sequences=2048, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(PRETRAIN_STEPS):
        batch = data[torch.randint(len(data), (32,), generator=g)]
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model


class CausalLM(LightningModule):
    """A causal LM with LoRA adapters on every linear layer of its blocks; logs the mean token loss."""

    def __init__(self, base: LlamaForCausalLM, rank: int = 8, lr: float = 3e-3) -> None:
        super().__init__()
        self.lr = lr
        torch.manual_seed(1)  # the adapters' initial values
        config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
        self.model = get_peft_model(base, config)

    def training_step(self, batch, batch_idx):
        (ids,) = batch
        loss = self.model(input_ids=ids, labels=ids).loss
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        (ids,) = batch
        self.log("val_loss", self.model(input_ids=ids, labels=ids).loss)

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=self.lr)
# --8<-- [end:model]


def full_model_module(base: LlamaForCausalLM) -> CausalLM:
    """The same module with every weight trainable (the adapters merged away): the full-model baseline."""
    module = CausalLM(base)
    module.model = module.model.merge_and_unload()  # type: ignore[assignment]
    for p in module.model.parameters():
        p.requires_grad_(True)
    return module


def data():
    """8 clients, each writing mostly (3 in 4 sentences) about one topic in form 1; held-out text of every topic."""
    topics = list(TOPICS)
    parts = []
    for client in range(8):
        own = topics[client % len(topics)]
        parts.append(torch.cat([corpus([own], 1, 48, seed=100 + client), corpus(topics, 1, 16, seed=200 + client)]))
    sizes = [len(p) for p in parts]
    train = TensorDataset(torch.cat(parts))
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    indices = [list(range(s, s + n)) for s, n in zip(starts, sizes)]
    val = DataLoader(TensorDataset(corpus(topics, 1, 128, seed=999)), batch_size=64)
    return make_clients(train, indices, batch_size=8), val


def perplexity(module: LightningModule, val: DataLoader) -> float:
    """exp of the mean token loss on ``val`` (batches of one size); the module is left in training mode."""
    module.eval()
    with torch.no_grad():
        losses = [module.model(input_ids=ids, labels=ids).loss for (ids,) in val]
    module.train()
    return math.exp(float(torch.stack(losses).mean()))


# --8<-- [start:run]
def federate(name: str, algorithm, module: CausalLM, clients, val, folder: Path, adapters_only: bool = True):
    loop = FederatedLoop(
        rounds=ROUNDS, clients_per_round=4, local_epochs=1, seed=0, algorithm=algorithm,
        federation=adapter_policy(module) if adapters_only else None,
        trainer_kwargs={"precision": PRECISION, "accumulate_grad_batches": 2},
        callbacks=[GlobalModelCheckpoint(save_top_k=0)] if adapters_only else [],
        checkpoint_dir=folder, enable_model_checkpoint=False, enable_progress_bar=False, evaluate_every=ROUNDS,
    )
    before = perplexity(module, val)
    start = time.perf_counter()
    loop.fit(module, clients, val_dataloaders=val)
    return loop, before, perplexity(module, val), time.perf_counter() - start
# --8<-- [end:run]


def sizes(folder: Path) -> tuple[float, float]:
    """MB of the last federated checkpoint, and of the tensors the server keeps beside the global model."""
    from lightning_fedmut import checkpoint as ckpt

    path = sorted(folder.glob("round-*.ckpt"))[-1]
    saved = ckpt.load_checkpoint(path, history=False)
    tensors = [saved["model"], saved["aggregator"], saved["callbacks"], saved["client_states"]]
    return path.stat().st_size / 1e6, _tensor_bytes(tensors) / 1e6


def _tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def main() -> None:
    torch.set_num_threads(1)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    clients, val = data()
    base_seconds = time.perf_counter()
    base_state = {k: v.clone() for k, v in base_model().state_dict().items()}
    base_seconds = time.perf_counter() - base_seconds

    def fresh_base() -> LlamaForCausalLM:  # the pretrained base again, without training it again
        built = LlamaForCausalLM(llama_config())
        built.load_state_dict(base_state)
        return built

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, algorithm, adapters_only in [("FedAvg, LoRA", FedAvg(weighted=False), True),
                                               ("FedMut, LoRA", FedMut(radius=2.0), True),
                                               ("FedAvg, full model", FedAvg(weighted=False), False)]:
            folder = Path(tmp) / name.replace(", ", "-").replace(" ", "_")
            module = CausalLM(fresh_base()) if adapters_only else full_model_module(fresh_base())
            trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
            _, before, after, seconds = federate(name, algorithm, module, clients, val, folder, adapters_only)
            ckpt_mb, server_mb = sizes(folder)
            rows.append((name, trainable, server_mb, ckpt_mb, before, after, seconds))
            if name == "FedMut, LoRA":  # peft's users load the federated adapters onto the base
                loaded = PeftModel.from_pretrained(fresh_base(), folder / "last-adapters")
                check = perplexity(_Wrap(loaded), val)
                assert math.isclose(check, after, rel_tol=1e-6), (check, after)
                shutil.copytree(folder / "last-adapters", OUTPUT / "last-adapters", dirs_exist_ok=True)
    lines = ["| Run | trained weights | server state (MB) | checkpoint (MB) | perplexity before | perplexity after |"
             " seconds |", "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {n} | {t:,} | {s:.3f} | {c:.3f} | {b:.2f} | {a:.2f} | {sec:.0f} |" for n, t, s, c, b, a, sec in rows]
    table = "\n".join(lines)
    print(f"base pretrained in {base_seconds:.0f} s ({PRETRAIN_STEPS} steps); precision {PRECISION}; "
          f"{ROUNDS} rounds, 4 of 8 clients per round\n{table}")
    (OUTPUT / "table.md").write_text(table + "\n")


class _Wrap(LightningModule):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model


if __name__ == "__main__":
    main()
