"""FedGen: the client regulariser and the generator's training against float64 hand computations, round 0 as FedAvg,
the head split and its errors, the label counts, a bit-for-bit resume with every piece of server state, and two
workers equal to one process."""

from __future__ import annotations

import copy
import math
import sys

import pytest
import torch
from helpers import TinyModule, state_of
from lightning.pytorch import Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_fedmut import FederatedCallback, FederatedLoop, make_clients
from lightning_fedmut import algorithms as algos
from lightning_fedmut.callbacks import FedGen as FedGenCallback
from lightning_fedmut.callbacks.fedgen import CLIENT_LABEL_COUNTS_KEY, GeneratorRegularizer, find_head
from lightning_fedmut.checkpoint import list_checkpoints, load_checkpoint
from lightning_fedmut.data import partition_dirichlet
from lightning_fedmut.functional.distillation import diversity_loss, label_weights, teacher_loss
from lightning_fedmut.models.generator import ConditionalGenerator

distributed = pytest.importorskip("lightning_fedmut.distributed")
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="workers are forked; tested on Linux")

SMALL = {"hidden_dim": 6, "noise_dim": 3, "batch_size": 5}


# ------------------------------------------------------------------------------------------ the losses
def test_label_weights_teacher_and_diversity_losses_against_float64_sums():
    counts = torch.tensor([[3, 0, 1], [1, 2, 0]])
    weights, learnt = label_weights(counts)
    # w[c][k] = counts[k][c] / sum_j counts[j][c]; a label is learnt when some client has more than one example
    assert weights.tolist() == [[0.75, 0.25], [0.0, 1.0], [1.0, 0.0]] and learnt == [0, 1]

    logits = [torch.tensor([[1.0, -0.5, 0.2], [0.3, 0.1, -1.0]], dtype=torch.float64),
              torch.tensor([[-0.2, 0.4, 0.0], [2.0, -1.0, 0.5]], dtype=torch.float64)]
    y = torch.tensor([0, 1])
    expected = 0.0
    for k, rows in enumerate(logits):
        ces = [math.log(sum(math.exp(v) for v in row.tolist())) - row[int(c)].item() for row, c in zip(rows, y)]
        shares = [weights[int(c), k].item() for c in y]
        expected += sum(ces) / 2 * sum(shares) / 2  # the reference's (B,) * (B, 1) broadcast: mean CE x mean weight
    assert teacher_loss(logits, y, weights).item() == pytest.approx(expected, rel=1e-12, abs=0)

    noise = torch.tensor([[0.1, 0.7], [0.4, 0.2], [0.9, 0.5]], dtype=torch.float64)
    feats = torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, 1.5], [-1.0, 0.5, 2.0]], dtype=torch.float64)
    pairs = [(i, j) for i in range(3) for j in range(3)]
    d_feat = {(i, j): sum(abs(a - b) for a, b in zip(feats[i].tolist(), feats[j].tolist())) / 3 for i, j in pairs}
    d_noise = {(i, j): sum((a - b) ** 2 for a, b in zip(noise[i].tolist(), noise[j].tolist())) / 2 for i, j in pairs}
    expected = math.exp(-sum(d_noise[p] * d_feat[p] for p in pairs) / 9)
    assert diversity_loss(noise, feats).item() == pytest.approx(expected, rel=1e-12, abs=0)


# ---------------------------------------------------------------------------------- the client regulariser
def _generator(seed=3):
    torch.manual_seed(seed)
    gen = ConditionalGenerator(num_classes=3, latent_dim=5, hidden_dim=6, noise_dim=2)
    bn = gen.hidden[1]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 1.5)
    return gen.eval()


def _client_step_float64(module, gen, batches, seed, alpha, beta, bs, lr, accumulate):
    """One SGD step of CE + alpha CE(h(G(z', y')), y') + beta KL(softmax(h(G(z, y))) || softmax(f(x))), written out
    in float64 with the regulariser's draws (per batch: z, then y', then z')."""
    m, g = copy.deepcopy(module).double(), copy.deepcopy(gen).double().eval()
    head = m.net[2]
    rng = torch.Generator().manual_seed(seed)

    def log_softmax(t):
        return t - t.exp().sum(1, keepdim=True).log()

    total = torch.zeros((), dtype=torch.float64)
    for x, y in batches:
        z = torch.rand(len(y), 2, generator=rng).double()
        sampled = torch.randint(3, (bs,), generator=rng)
        z_sampled = torch.rand(bs, 2, generator=rng).double()
        logits = m(x.double())
        ce = -log_softmax(logits)[torch.arange(len(y)), y].mean()
        with torch.no_grad():
            target = log_softmax(head(g(y, z))).exp()
        kl = (target * (target.log() - log_softmax(logits))).sum(1).mean()
        gen_logits = head(g(sampled, z_sampled).detach())
        ce_gen = -log_softmax(gen_logits)[torch.arange(bs), sampled].mean()
        total = total + (ce + alpha * ce_gen + beta * kl) / accumulate
    params = list(m.parameters())
    grads = torch.autograd.grad(total, params)
    return {n: p.detach() - lr * gr for (n, p), gr in zip(m.named_parameters(), grads)}


@pytest.mark.parametrize("accumulate", [1, 2])
def test_the_client_regulariser_step_matches_float64(accumulate):
    torch.manual_seed(0)
    module = TinyModule(features=4, classes=3, hidden=5, lr=0.1)
    x, y = torch.randn(8, 4), torch.tensor([0, 1, 2, 2, 1, 0, 0, 2])
    batches = [(x[:4], y[:4]), (x[4:], y[4:])][:accumulate]
    gen = _generator()
    expected = _client_step_float64(module, gen, batches, seed=11, alpha=0.3, beta=0.7, bs=6, lr=0.1,
                                    accumulate=accumulate)
    regularizer = GeneratorRegularizer(gen, "net.2", alpha=0.3, beta=0.7, batch_size=6, seed=11)
    trainer = Trainer(max_steps=1, accumulate_grad_batches=accumulate, callbacks=[regularizer], logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      accelerator="cpu")
    trainer.fit(module, DataLoader(TensorDataset(x[:4 * accumulate], y[:4 * accumulate]), batch_size=4))
    got = dict(module.named_parameters())
    for name, value in expected.items():
        torch.testing.assert_close(got[name].detach().double(), value, rtol=0, atol=2e-6)
    # the term changed the step: without it the step is plain SGD on the module's loss
    plain = _client_step_float64(module, gen, batches, seed=11, alpha=0.0, beta=0.0, bs=6, lr=0.1,
                                 accumulate=accumulate)
    assert max((plain[n] - expected[n]).abs().max().item() for n in expected) > 1e-3
    assert regularizer._handle is None  # the hook on the head is gone once training ends


# ------------------------------------------------------------------------------------------- in the loop
def _clients(synthetic, num_clients=6, batch_size=16):
    train, _ = synthetic
    parts = partition_dirichlet(train.tensors[1].numpy(), num_clients=num_clients, alpha=0.5, min_size=8, seed=0)
    return make_clients(train, parts, batch_size=batch_size)


def _fit(synthetic, algorithm, rounds=2, callbacks=(), executor=None, checkpoint_dir=None, ckpt_path=None):
    _, val = synthetic
    torch.manual_seed(0)
    module = TinyModule(batch_norm=True, momentum=0.5)
    loop = FederatedLoop(rounds=rounds, clients_per_round=3, local_steps=3, seed=0, enable_progress_bar=False,
                         algorithm=algorithm, callbacks=list(callbacks), executor=executor,
                         checkpoint_dir=checkpoint_dir)
    result = loop.fit(module, _clients(synthetic), val_dataloaders=DataLoader(val, batch_size=60), ckpt_path=ckpt_path)
    return module, result, loop


def test_round_0_is_fedavg_bit_for_bit_and_round_1_is_regularised(synthetic):
    fedavg, _, _ = _fit(synthetic, algos.FedAvg(), rounds=1)
    fedgen, result, _ = _fit(synthetic, algos.FedGen(**SMALL), rounds=1)
    assert all(torch.equal(v, fedavg.state_dict()[k]) for k, v in fedgen.state_dict().items())
    assert set(result.history[0]) >= {"fedgen/teacher_loss", "fedgen/diversity_loss"}
    fedavg2, _, _ = _fit(synthetic, algos.FedAvg(), rounds=2)
    fedgen2, _, _ = _fit(synthetic, algos.FedGen(**SMALL), rounds=2)
    assert not torch.equal(fedavg2.net[3].weight, fedgen2.net[3].weight)
    fedgen_off, _, _ = _fit(synthetic, algos.FedGen(alpha=0.0, beta=0.0, **SMALL), rounds=2)
    torch.testing.assert_close(fedgen_off.net[3].weight, fedavg2.net[3].weight, rtol=0, atol=1e-6)


class RecordGeneratorInputs(FedGenCallback):
    """FedGen that keeps what its generator training starts from: the heads, the counts, the generator, the rng."""

    def _train_generator(self, module, heads, counts):
        self.seen = {"heads": copy.deepcopy(heads), "counts": counts.clone(), "rng": self.rng.get_state(),
                     "generator": {k: v.clone() for k, v in self.generator.state_dict().items()}}
        super()._train_generator(module, heads, counts)


def test_the_generator_training_matches_float64(synthetic):
    callback = RecordGeneratorInputs(generator_steps=3, generator_lr=1e-2, **SMALL)
    algorithm = algos.FederatedAlgorithm(aggregator=algos.FedAvg().aggregator, local=[callback])
    _, result, loop = _fit(synthetic, algorithm, rounds=1)
    seen = callback.seen
    # the inputs: each trained client's head and its label counts, in slot order
    for slot, client in enumerate(loop.sampled_clients):
        labels = torch.cat([batch[1] for batch in client.data])
        assert seen["counts"][slot].tolist() == torch.bincount(labels, minlength=3).tolist()
        assert loop.client_states.get(client.id)[CLIENT_LABEL_COUNTS_KEY] == seen["counts"][slot].tolist()
    assert [sorted(h) for h in seen["heads"]] == [["bias", "weight"]] * 3

    gen = ConditionalGenerator(3, 16, hidden_dim=6, noise_dim=3).double()
    gen.load_state_dict(seen["generator"])
    gen.train()
    optimizer = torch.optim.Adam(gen.parameters(), lr=1e-2, weight_decay=1e-2)
    rng = torch.Generator()
    rng.set_state(seen["rng"])
    counts = seen["counts"].double()
    learnt = [c for c in range(3) if counts[:, c].max() > 1]
    teacher_sum = diversity_sum = 0.0
    for _ in range(3):
        y = torch.tensor(learnt)[torch.randint(len(learnt), (5,), generator=rng)]
        noise = torch.rand(5, 3, generator=rng).double()
        feats = gen(y, noise)
        teacher = torch.zeros((), dtype=torch.float64)
        for k, head in enumerate(seen["heads"]):
            logits = feats @ head["weight"].double().T + head["bias"].double()
            ce = logits.exp().sum(1).log() - logits[torch.arange(5), y]
            share = counts[k, y] / counts[:, y].sum(0)
            teacher = teacher + ce.mean() * share.mean()
        d_feat = (feats[:, None] - feats[None]).abs().mean(2)
        d_noise = ((noise[:, None] - noise[None]) ** 2).mean(2)
        diversity = torch.exp(-(d_noise * d_feat).mean())
        optimizer.zero_grad()
        (teacher + diversity).backward()
        optimizer.step()
        teacher_sum, diversity_sum = teacher_sum + teacher.item(), diversity_sum + diversity.item()
    got = callback.generator.state_dict()
    for name, value in gen.state_dict().items():
        torch.testing.assert_close(got[name].double(), value.double(), rtol=0, atol=1e-5, msg=name)
    assert result.history[0]["fedgen/teacher_loss"] == pytest.approx(teacher_sum / 3, rel=1e-5)
    assert result.history[0]["fedgen/diversity_loss"] == pytest.approx(diversity_sum / 3, rel=1e-5)


# --------------------------------------------------------------------------------------------- the split
class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
        self.classifier = nn.Linear(6, 3)


def test_the_head_is_found_by_path_callable_or_last_linear_and_refused_clearly():
    net = Backbone()
    assert find_head(net)[0] == "classifier"
    assert find_head(net, "features.0")[0] == "features.0"
    assert find_head(net, lambda m: m.classifier) == ("classifier", net.classifier)
    with pytest.raises(ValueError, match=r"Expected `head` to name a submodule of Backbone, got 'head'; its"
                                         r" submodules: features, classifier\."):
        find_head(net, "head")
    with pytest.raises(ValueError, match=r"Expected `head` to return a submodule of Backbone \(not the module"
                                         r" itself\), got Linear\."):
        find_head(net, lambda m: nn.Linear(6, 3))
    with pytest.raises(ValueError, match=r"Expected Sequential to have an nn.Linear classifier layer for `head=None`"):
        find_head(nn.Sequential(nn.Conv1d(1, 1, 1)))
    with pytest.raises(TypeError, match=r"Expected `head` to be a submodule path, a function of the module or None,"
                                        r" got int\."):
        FedGenCallback(head=3)  # type: ignore[arg-type]


def test_a_wrong_head_is_refused_when_the_fit_starts(synthetic):
    with pytest.raises(ValueError, match=r"Expected `head` to name a submodule of TinyModule, got 'fc'; its"
                                         r" submodules: net\."):
        _fit(synthetic, algos.FedGen(head="fc", **SMALL), rounds=1)


# ------------------------------------------------------------------------------------- resume and workers
class Crash(FederatedCallback):
    def on_round_start(self, loop, module):
        if loop.round == 2:
            raise RuntimeError("crash at round 2")


def test_fedgen_resumes_bit_for_bit_with_its_generator_optimizer_rng_and_label_counts(synthetic, tmp_path):
    def algorithm():
        return algos.FedGen(reset_optimizer=False, generator_steps=4, **SMALL)

    expected, result, _ = _fit(synthetic, algorithm(), rounds=4)
    with pytest.raises(RuntimeError, match="crash at round 2"):
        _fit(synthetic, algorithm(), rounds=4, callbacks=[Crash()], checkpoint_dir=tmp_path)
    saved = load_checkpoint(list_checkpoints(tmp_path)[-1])  # round 2 done
    state = saved["callbacks"]["FedGen"]
    assert sorted(state) == ["generator_rounds", "generator_state", "optimizer_state", "rng"]
    assert state["generator_rounds"] == 2 and len(state["optimizer_state"]["state"]) == 6  # Adam's moments
    assert "hidden.1.running_mean" in state["generator_state"]
    counts = [s[CLIENT_LABEL_COUNTS_KEY] for s in saved["client_states"]["states"].values()]
    assert counts and all(len(c) == 3 and sum(c) > 0 for c in counts)

    resumed, resumed_result, _ = _fit(synthetic, algorithm(), rounds=4, checkpoint_dir=tmp_path, ckpt_path="last")
    assert all(torch.equal(v, expected.state_dict()[k]) for k, v in resumed.state_dict().items())
    assert resumed_result.history == result.history and [r["round"] for r in result.history] == [0, 1, 2, 3]


@linux_only
@pytest.mark.slow
def test_two_workers_equal_one_process_bit_for_bit(synthetic):
    one, one_result, _ = _fit(synthetic, algos.FedGen(**SMALL), rounds=3)
    two, two_result, _ = _fit(synthetic, algos.FedGen(**SMALL), rounds=3,
                              executor=distributed.DistributedExecutor(workers=2, timeout=60.0))
    assert all(torch.equal(v, two.state_dict()[k]) for k, v in state_of(one).items())
    assert one_result.history == two_result.history
    assert one_result.client_history == two_result.client_history
