"""Adapter-only federation: with a peft model only the adapters are federated, mutated and checkpointed; the
base stays as the user's module holds it, and a resumed run must start from the same base."""

from __future__ import annotations

import pytest

peft = pytest.importorskip("peft")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from helpers import Crash, make_synthetic, state_of  # noqa: E402
from lightning.pytorch import LightningModule  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from lightning_fedmut import FederatedCallback, FederatedLoop, make_clients  # noqa: E402
from lightning_fedmut import algorithms as algos  # noqa: E402
from lightning_fedmut import checkpoint as ckpt  # noqa: E402
from lightning_fedmut.adapters import adapter_keys, adapter_policy  # noqa: E402
from lightning_fedmut.callbacks import GlobalModelCheckpoint, MutationCallback  # noqa: E402
from lightning_fedmut.data import partition_iid  # noqa: E402

ADAPTERS = ["net.base_model.model.0.lora_A.default.weight", "net.base_model.model.0.lora_B.default.weight",
            "net.base_model.model.3.lora_A.default.weight", "net.base_model.model.3.lora_B.default.weight"]


def make_base(hidden: int = 16, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 3))


def lora_config(rank: int = 2):
    return peft.LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=["0", "3"])


class LoraModule(LightningModule):
    """A LoRA-adapted MLP (with BatchNorm: base buffers that training would change) that logs val_acc."""

    def __init__(self, hidden: int = 16, rank: int = 2, base_seed: int = 0, adapter_seed: int = 1) -> None:
        super().__init__()
        self.save_hyperparameters()
        base = make_base(hidden, base_seed)
        torch.manual_seed(adapter_seed)
        self.net = peft.get_peft_model(base, lora_config(rank))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)


class Starts(FederatedCallback):
    """Each client's start state, per round and slot."""

    def __init__(self):
        self.starts = {}

    def on_client_fit_start(self, loop, module, task):
        self.starts[(task.round, task.slot)] = {k: v.detach().clone() for k, v in task.start_state.items()}


def run(algorithm, tmp_path=None, rounds=3, model=None, ckpt_path=None, extra=(), **kwargs):
    train, val = make_synthetic()
    model = LoraModule() if model is None else model
    clients = make_clients(train, partition_iid(len(train), 4, seed=0), batch_size=16)
    loop = FederatedLoop(rounds=rounds, clients_per_round=2, local_epochs=1, seed=3, enable_progress_bar=False,
                         algorithm=algorithm, federation=adapter_policy(model), callbacks=list(extra),
                         checkpoint_dir=tmp_path, **kwargs)
    result = loop.fit(model, clients, val_dataloaders=DataLoader(val, batch_size=60), ckpt_path=ckpt_path)
    return model, loop, result


def test_adapter_keys_are_the_entries_peft_saves_under_the_module_s_own_names():
    model = LoraModule()
    assert adapter_keys(model) == ADAPTERS
    federated, local, frozen = adapter_policy(model).split(model)
    assert federated == ADAPTERS and not local
    assert "net.base_model.model.1.running_mean" in frozen and "net.base_model.model.0.base_layer.weight" in frozen
    assert len(frozen) == len(model.state_dict()) - len(ADAPTERS)
    with pytest.raises(ValueError, match=r"`adapter_name` to be one of \['default'\].*got 'other'"):
        adapter_keys(model, adapter_name="other")
    with pytest.raises(ValueError, match="Expected `module` to hold a peft model"):
        adapter_policy(make_base())


def test_modules_to_save_are_adapter_entries_too():
    base = make_base()
    config = peft.LoraConfig(r=2, target_modules=["0"], modules_to_save=["5"])
    model = peft.get_peft_model(base, config)
    assert adapter_keys(model) == [
        "base_model.model.0.lora_A.default.weight", "base_model.model.0.lora_B.default.weight",
        "base_model.model.5.modules_to_save.default.weight", "base_model.model.5.modules_to_save.default.bias"]


def test_adapter_only_fedmut_leaves_every_base_entry_bitwise_and_mutates_adapters_only():
    initial = state_of(LoraModule())
    starts = Starts()
    model, loop, _ = run(algos.FedMut(radius=4.0), extra=[starts])
    final = state_of(model)
    base = [k for k in final if k not in ADAPTERS]
    assert all(torch.equal(final[k], initial[k]) for k in base)  # BatchNorm's statistics included
    assert all(not torch.equal(final[k], initial[k]) for k in ADAPTERS[1::2])  # lora_B starts at zero and moves
    mutation = next(cb for cb in loop.callbacks if isinstance(cb, MutationCallback))
    assert mutation._keys == ADAPTERS
    for start in starts.starts.values():
        assert all(torch.equal(start[k], initial[k]) for k in base)
    late = [starts.starts[(2, slot)] for slot in range(2)]
    assert all(not torch.equal(late[0][k], late[1][k]) for k in ADAPTERS)  # mutated: the two start models differ


def test_checkpoint_holds_the_adapters_and_a_digest_of_the_base(tmp_path):
    model = LoraModule(hidden=256, rank=2)
    adapter_bytes = sum(v.numel() * v.element_size() for k, v in model.state_dict().items() if k in ADAPTERS)
    model_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    assert model_bytes > 20 * adapter_bytes  # the base dominates the model
    run(algos.FedAvg(), tmp_path / "ckpt", rounds=2, model=model, enable_model_checkpoint=False)
    path = tmp_path / "ckpt" / "round-00002.ckpt"
    saved = ckpt.load_checkpoint(path, history=False)
    assert list(saved["model"]) == ADAPTERS
    assert saved["frozen"]["keys"] == len(model.state_dict()) - len(ADAPTERS)
    # beyond the adapters: the sampler's generator state (5 KB), the run's fingerprint and progress, torch's framing
    assert path.stat().st_size <= 1.1 * adapter_bytes + 12 * 2**10


def test_resume_with_another_base_is_refused(tmp_path):
    with pytest.raises(RuntimeError, match="crash at round 2"):
        run(algos.FedMut(), tmp_path, rounds=4, extra=[Crash(2)])
    other = LoraModule()
    with torch.no_grad():  # another base: one weight of its first layer differs in its last bit
        weight = other.net.base_model.model[0].base_layer.weight
        weight[0, 0] = torch.nextafter(weight[0, 0], torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"the base model differs from the one this run was started with.*bytes"
                                         r" differ"):
        run(algos.FedMut(), tmp_path, rounds=4, model=other, ckpt_path="last")


def test_resume_with_the_same_base_is_bitwise_equal_to_an_uninterrupted_run(tmp_path):
    reference, _, ref_result = run(algos.FedMut(), rounds=4)
    with pytest.raises(RuntimeError, match="crash at round 2"):
        run(algos.FedMut(), tmp_path, rounds=4, extra=[Crash(2)])
    assert list(ckpt.load_checkpoint(tmp_path / "round-00002.ckpt", history=False)["model"]) == ADAPTERS
    model, _, result = run(algos.FedMut(), tmp_path, rounds=4, ckpt_path="last")
    expected, got = state_of(reference), state_of(model)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert [r["val_acc"] for r in result.history] == [r["val_acc"] for r in ref_result.history]


def test_a_checkpoint_that_holds_the_whole_model_still_resumes(tmp_path):
    reference, _, _ = run(algos.FedMut(), rounds=4)
    with pytest.raises(RuntimeError, match="crash at round 2"):
        run(algos.FedMut(), tmp_path, rounds=4, extra=[Crash(2)])
    path = tmp_path / "round-00002.ckpt"
    saved = ckpt.load_checkpoint(path, history=False)
    whole = {k: v.clone() for k, v in LoraModule().state_dict().items()}
    whole.update(saved["model"])
    old = {k: v for k, v in saved.items() if k != "frozen"}
    old["model"] = whole
    path.unlink()
    ckpt.save_checkpoint(old, tmp_path, keep_last=5)
    model, _, _ = run(algos.FedMut(), tmp_path, rounds=4, ckpt_path="last")
    expected, got = state_of(reference), state_of(model)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_fedexp_report_keeps_the_adapters_only(tmp_path):
    run(algos.FedExP(average_last_two=True), tmp_path, rounds=2)
    saved = ckpt.load_checkpoint(tmp_path / "round-00002.ckpt", history=False)["callbacks"]["FedExPReport"]
    assert saved["keys"] == ADAPTERS and len(saved["previous"]) == len(ADAPTERS)


def test_global_model_checkpoint_writes_adapters_that_peft_loads(tmp_path):
    model, _, _ = run(algos.FedMut(), rounds=2, extra=[GlobalModelCheckpoint(dirpath=tmp_path, save_top_k=0)])
    folder = tmp_path / "last-adapters"
    assert sorted(p.name for p in folder.iterdir() if p.suffix in (".json", ".safetensors")) == [
        "adapter_config.json", "adapter_model.safetensors"]
    loaded = peft.PeftModel.from_pretrained(make_base(), folder)
    x = make_synthetic()[1].tensors[0]
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


#: FedGen trains its generator through the model's head, which the base freezes here.
NEEDS_A_TRAINABLE_HEAD = {"FedGen"}
#: Methods whose own policy keeps part of the base local (BatchNorm, a head): refused with the adapter policy.
KEEP_BASE_LOCAL = {"FedBN", "FedPer", "FedRep"}


def _tensor_bytes(obj):
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in algos.names() if n not in NEEDS_A_TRAINABLE_HEAD | KEEP_BASE_LOCAL])
def test_every_registered_method_federates_the_adapters_alone(tmp_path, name):
    model = LoraModule(hidden=256)
    initial = state_of(model)
    adapter_bytes = sum(initial[k].numel() * initial[k].element_size() for k in ADAPTERS)
    base_bytes = sum(v.numel() * v.element_size() for k, v in initial.items() if k not in ADAPTERS)
    run(algos.build_algorithm(name, {}), tmp_path, rounds=2, model=model)
    final = state_of(model)
    assert all(torch.equal(final[k], initial[k]) for k in final if k not in ADAPTERS)
    assert any(not torch.equal(final[k], initial[k]) for k in ADAPTERS)
    saved = ckpt.load_checkpoint(tmp_path / "round-00002.ckpt", history=False)
    assert list(saved["model"]) == ADAPTERS
    server = _tensor_bytes([saved["aggregator"], saved["callbacks"], saved["client_states"]])
    assert server <= 10 * adapter_bytes < base_bytes / 4  # moments, controls, K models, per-client states


def test_a_method_that_keeps_part_of_the_base_local_is_refused_before_training(tmp_path):
    model = LoraModule(hidden=256)
    initial = state_of(model)
    with pytest.raises(ValueError, match=r"^Expected each entry to be either local or frozen, got \['net\.base_model"
                                         r"\.model\.1\.bias'"):
        run(algos.FedBN(), tmp_path, rounds=1, model=model)
    assert all(torch.equal(v, initial[k]) for k, v in state_of(model).items())
