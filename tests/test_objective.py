"""The training objective (distrec.train.objective) around a real, unsharded TorchRec model on CPU.

No Ray. The last test runs the objective under a real 2-rank DistributedModelParallel and
TrainPipelineSparseDist (gloo, two spawned processes): the FX tracing of the pipeline, DDP's
handling of the critic (whose parameters never get a gradient in the backward) and the critic
replicas staying identical across ranks when one rank trains on padding batches.
"""

from __future__ import annotations

import copy
import math
import os
import socket
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from distrec.config import CRLConfig, DistillConfig, load_config
from distrec.data.batch import Batch, BatchBuilder
from distrec.data.schema import ITEM, LABEL, USER, Manifest, SparseFeature
from distrec.errors import ConfigError
from distrec.models.architectures import build_model
from distrec.train.objective import COMPONENTS, Loss, Objective, warmup_factor

torch.set_num_threads(1)

USERS, ITEMS, TAGS, CONF = 64, 48, 8, 4
TAG, CONFOUNDER, SOFT = "item_tag", "conf_tag", "soft"


def tiny_manifest() -> Manifest:
    """user, item and an item tag; the confounder is a deterministic function of the tag."""
    return Manifest(
        name="tiny",
        sparse=[
            SparseFeature(USER, USERS, "user"),
            SparseFeature(ITEM, ITEMS, "item"),
            SparseFeature(TAG, TAGS, "item"),
        ],
        confounders={CONFOUNDER: CONF},
    )


def tiny_table(n: int, seed: int, conf_per_row: bool = False) -> pa.Table:
    """label ~ Bernoulli(sigmoid(base + (conf - 1.5) / 1.5)), base = user effect + item effect, conf = tag % 4,
    tag = item % 8: the label leans on the confounder, so a model trained on labels alone encodes it in Z.
    ``base`` (the part of the logit without the confounder) is the ``base`` column, which batches ignore.
    ``conf_per_row``: conf is drawn uniformly for each row instead, independent of the user and the item."""
    rng = np.random.default_rng(seed)
    user_effect = np.random.default_rng(99).normal(size=USERS)
    item_effect = np.random.default_rng(98).normal(size=ITEMS)
    users = rng.integers(0, USERS, n)
    items = rng.integers(0, ITEMS, n)
    tags = items % TAGS
    conf = rng.integers(0, CONF, n) if conf_per_row else tags % CONF
    base = user_effect[users] + item_effect[items]
    prob = 1 / (1 + np.exp(-(base + (conf - 1.5) / 1.5)))
    return pa.table(
        {
            USER: pa.array(users, pa.int64()),
            ITEM: pa.array(items, pa.int64()),
            TAG: pa.array(tags, pa.int64()),
            CONFOUNDER: pa.array(conf, pa.int64()),
            LABEL: pa.array((rng.random(n) < prob).astype(np.float32)),
            SOFT: pa.array(prob.astype(np.float32)),
            "base": pa.array(base.astype(np.float32)),
        }
    )


def tiny_objective(
    distill: DistillConfig | None, crl: CRLConfig | None, seed: int = 0
) -> tuple[Objective, BatchBuilder]:
    torch.manual_seed(seed)
    manifest = tiny_manifest()
    model = build_model("mlp", "student", manifest, 8, [16, 8], torch.device("cpu"))
    return Objective(model, distill, crl, list(manifest.confounders.values())), BatchBuilder(manifest, [SOFT])


def main_parameters(objective: Objective) -> list[torch.nn.Parameter]:
    """What the training loop's dense optimiser gets: everything but the critic."""
    return [p for name, p in objective.named_parameters() if ".critic." not in name]


def critic_state(loss: Loss) -> dict[str, torch.Tensor]:
    assert loss.critic is not None
    return {k: v.detach().clone() for k, v in loss.critic.state_dict().items()}


# --- padding batches ---------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["nce_club", "club"])
def test_padding_batch_gives_zero_loss_zero_gradients_and_moves_nothing(estimator: str) -> None:
    objective, builder = tiny_objective(DistillConfig(weight=0.5), CRLConfig(beta=1.0, estimator=estimator))
    objective.train()
    live = builder(tiny_table(64, seed=1))
    objective(live)[0].backward()  # one real step first: the critic's optimiser exists and has state
    objective.zero_grad(set_to_none=True)
    critic_before, step_before = critic_state(objective.loss), objective.loss.step.item()

    loss, out = objective(live.as_padding())
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(out.components, torch.zeros(len(COMPONENTS)))
    grads = [p.grad for p in main_parameters(objective) if p.grad is not None]
    assert grads and all(torch.count_nonzero(g) == 0 for g in grads)
    assert objective.loss.step.item() == step_before
    after = critic_state(objective.loss)
    assert all(torch.equal(after[k], v) for k, v in critic_before.items())
    assert all(p.grad is None for p in objective.loss.critic.parameters())  # type: ignore[union-attr]


# --- schedules ----------------------------------------------------------------------------------------


def test_warmup_factor() -> None:
    steps = torch.tensor([0, 1, 5, 10, 11, 1000])
    assert [warmup_factor(s, 10).item() for s in steps] == pytest.approx([0.0, 0.1, 0.5, 1.0, 1.0, 1.0])
    assert warmup_factor(torch.tensor(0), 0).item() == 1.0


def test_lambda_and_beta_warm_up_over_live_training_steps() -> None:
    distill = DistillConfig(weight=0.8, schedule="linear_warmup", warmup_steps=4)
    crl = CRLConfig(beta=0.5, warmup_steps=10)
    objective, builder = tiny_objective(distill, crl)
    objective.train()
    batch = builder(tiny_table(64, seed=2))
    seen = []
    for step in range(12):
        if step in (3, 7):  # padding and evaluation forwards do not advance the schedules
            objective(batch.as_padding())[0].backward()
            with torch.no_grad():
                objective(batch)
        lam, beta = (c.item() for c in objective.loss.coefficients())
        assert objective.loss.step.item() == step
        assert lam == pytest.approx(0.8 * min(1.0, step / 4))
        assert beta == pytest.approx(0.5 * min(1.0, step / 10))
        loss, out = objective(batch)
        bce, kd, mi, _ = out.components.tolist()
        assert loss.item() == pytest.approx(bce + lam * kd + beta * mi, rel=1e-5, abs=1e-6)
        loss.backward()
        seen.append((lam, beta))
    assert seen[0] == (0.0, 0.0) and seen[-1] == pytest.approx((0.8, 0.5))
    # without a schedule the weights are constant from the first step
    objective, _ = tiny_objective(DistillConfig(weight=0.8), CRLConfig(beta=0.5))
    assert [c.item() for c in objective.loss.coefficients()] == pytest.approx([0.8, 0.5])


def test_components_are_the_unweighted_terms() -> None:
    objective, builder = tiny_objective(
        DistillConfig(weight=0.3, loss="kl"), CRLConfig(beta=0.7, representation="penultimate")
    )
    objective.train()
    batch = builder(tiny_table(128, seed=3))
    loss, out = objective(batch)
    bce, kd, mi, critic = out.components.tolist()
    assert loss.item() == pytest.approx(bce + 0.3 * kd + 0.7 * mi, rel=1e-5)
    assert bce > 0 and kd >= 0 and critic > 0
    assert critic == pytest.approx(math.log(128), rel=0.05)  # InfoNCE of a fresh critic: about log B
    teacher, _ = tiny_objective(None, None)
    loss, out = teacher(batch)
    assert out.components.tolist()[1:] == [0.0, 0.0, 0.0] and out.components[0].item() == pytest.approx(loss.item())


# --- the critic's own updates ------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["nce_club", "club"])
def test_critic_takes_critic_steps_adam_steps_on_detached_z(estimator: str) -> None:
    crl = CRLConfig(beta=1.0, estimator=estimator, critic_steps=3, critic_lr=1e-2, representation="penultimate")
    objective, builder = tiny_objective(DistillConfig(weight=1.0), crl)
    objective.train()
    critic = objective.loss.critic
    assert critic is not None
    reference = copy.deepcopy(critic)  # the same critic trained by hand: 3 Adam steps per batch
    reference_opt = torch.optim.Adam(reference.parameters(), lr=1e-2)
    for step in range(4):
        batch = builder(tiny_table(64, seed=10 + step))
        _, z = objective.model.logits_and_representation(batch)
        for _ in range(3):
            reference_opt.zero_grad()
            reference.critic_loss(z.detach(), batch.confounders).backward()
            reference_opt.step()
        objective(batch)[0].backward()
        objective.zero_grad(set_to_none=True)
        if step == 1:
            objective(batch.as_padding())[0].backward()  # no critic step on padding
    optimizer = objective.loss.critic_optimizer()
    assert optimizer is not None
    assert {optimizer.state[p]["step"].item() for p in critic.parameters()} == {12.0}
    for (name, p), q in zip(critic.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)


@pytest.mark.parametrize("estimator", ["nce_club", "club"])
def test_penalty_gradient_reaches_z_and_not_the_critic(estimator: str) -> None:
    loss_module = Loss(None, CRLConfig(beta=2.0, estimator=estimator), 8, [CONF])
    loss_module.train()
    _, builder = tiny_objective(None, None)
    batch = builder(tiny_table(64, seed=4))
    torch.manual_seed(1)
    logits = torch.randn(64, requires_grad=True)
    z = torch.randn(64, 8, requires_grad=True)
    loss, _ = loss_module(logits, z, batch)
    loss.backward()
    assert loss_module.critic is not None
    assert all(p.grad is None for p in loss_module.critic.parameters())
    # z's gradient is exactly beta times the estimate's, with the critic as it is after its step
    z2 = z.detach().clone().requires_grad_(True)
    loss_module.critic.mi(z2, batch.confounders).backward()
    assert z.grad is not None and z2.grad is not None and z.grad.abs().sum() > 0
    torch.testing.assert_close(z.grad, 2.0 * z2.grad)


def test_crl_needs_a_representation() -> None:
    with pytest.raises(ValueError, match="representation"):
        Loss(None, CRLConfig(beta=1.0), None, [CONF])
    assert Loss(None, CRLConfig(beta=1.0), 8, []).critic is None  # no confounders: no penalty
    assert Loss(None, CRLConfig(beta=0.0), 8, [CONF]).critic is None


# --- the penalty works through the objective -----------------------------------------------------------

TRAIN_STEPS = 400
BATCH = 256


def train(beta: float, estimator: str, seed: int = 0, representation: str = "penultimate") -> Objective:
    """400 steps of Adam (lr 1e-2) on BCE + KD (+ beta * MI after a 100-step warm-up, 2 critic steps at
    3x the encoder's learning rate: a critic that learns no faster than Z moves cannot track it). The
    penalty alone, without the confounder offsets: here C is a function of the item, so its effect on the
    label is real and the offsets would take it out of every Z the tests probe."""
    crl = (
        CRLConfig(
            beta=beta,
            estimator=estimator,
            critic_lr=3e-2,
            critic_steps=2,
            warmup_steps=100,
            representation=representation,
            confounder_bias=False,
        )
        if beta > 0
        else None
    )
    objective, builder = tiny_objective(DistillConfig(weight=1.0), crl, seed=seed)
    fit(objective, builder, tiny_table(TRAIN_STEPS * BATCH, seed=100 + seed))
    return objective


def fit(objective: Objective, builder: BatchBuilder, data: pa.Table) -> None:
    """TRAIN_STEPS steps of Adam (lr 1e-2) on the main parameters, BATCH consecutive rows of ``data`` each."""
    objective.train()
    opt = torch.optim.Adam(main_parameters(objective), lr=1e-2)
    for step in range(TRAIN_STEPS):
        loss, _ = objective(builder(data.slice(step * BATCH, BATCH)))
        opt.zero_grad()
        loss.backward()
        opt.step()


def evaluate(objective: Objective, representation: str = "penultimate") -> dict[str, float]:
    """``mi``: H(C) - CE of a fresh MLP probe of C from Z (the representation, or the logit with
    ``representation="score"``), fitted on 8k rows and scored on 8k others: a lower bound on I(Z; C)
    in nats (at most log 4) that no critic of the objective had a hand in.
    ``corr_base``: the correlation of the student's logit with the confounder-free part of the true logit."""
    builder = BatchBuilder(tiny_manifest(), [SOFT])
    fit_table, eval_table = tiny_table(8192, seed=7), tiny_table(8192, seed=8)
    fit, held_out = builder(fit_table), builder(eval_table)
    with torch.no_grad():
        z_fit = objective.model.logits_and_representation(fit)[1]
        logits, z_eval = objective.model.logits_and_representation(held_out)
        if representation == "score":
            z_fit, z_eval = objective.model(fit).unsqueeze(-1), logits.unsqueeze(-1)
    torch.manual_seed(0)
    probe = torch.nn.Sequential(torch.nn.Linear(z_fit.shape[1], 32), torch.nn.ReLU(), torch.nn.Linear(32, CONF))
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2)
    for step in range(400):
        rows = slice((step * 512) % 8192, (step * 512) % 8192 + 512)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(probe(z_fit[rows]), fit.confounders[rows, 0]).backward()
        opt.step()
    with torch.no_grad():
        cross_entropy = torch.nn.functional.cross_entropy(probe(z_eval), held_out.confounders[:, 0]).item()
    freq = torch.bincount(held_out.confounders[:, 0], minlength=CONF).double() / held_out.size
    entropy = -(freq * freq.log()).sum().item()
    base = eval_table.column("base").to_numpy()
    return {"mi": entropy - cross_entropy, "corr_base": float(np.corrcoef(logits.numpy(), base)[0, 1])}


@pytest.mark.parametrize("estimator", ["nce_club", "club"])
def test_crl_removes_confounder_information_from_z(estimator: str) -> None:
    """Measured with the NeuMF-shaped student, whose Z includes the element-wise user x item product
    (probe MI in nats): unpenalised 0.66 (seed 0); beta = 2 brings it to 0.29 with club and 0.34 with
    nce_club (seed 1: 0.17 and 0.29), while the logit's correlation with the confounder-free part
    rises from 0.81 to 0.93 and 0.88: the student trades the confounder for the causal signal. With
    the critic at the encoder's learning rate (1e-2) club only reached 0.41-0.43, and beta = 1 left
    club at 0.50: the penalty needs a critic that keeps up. The trajectories are sensitive, hence
    the loose 0.6 factor. (The earlier tower student, Z = MLP output only: 0.29-0.34 -> 0.01-0.05.)

    The correlation check matters: with a label driven mostly by C, the penalty collapsed Z to a
    constant (every ReLU of the MLP's last layer dead, BCE at log 2) even at beta = 0.1, which passes
    any MI check."""
    unpenalised = evaluate(train(0.0, estimator))
    penalised = evaluate(train(2.0, estimator))
    assert unpenalised["mi"] > 0.2, unpenalised
    assert penalised["mi"] < 0.6 * unpenalised["mi"], (unpenalised, penalised)
    assert penalised["corr_base"] > unpenalised["corr_base"] - 0.05, (unpenalised, penalised)


def test_crl_on_the_score_removes_confounder_information_from_the_logit() -> None:
    """``crl.representation=score``: Z is the logit. Probe MI of C from the logit (nats) and the logit's
    correlation with the confounder-free part, nce_club at beta 2, seed 0: unpenalised 0.18 and 0.81,
    penalised 0.01 and 0.95 (the penultimate Z's test above: 0.34 left and 0.88). A 1-d Z leaves the
    encoder nowhere to hide C from the critic."""
    unpenalised = evaluate(train(0.0, "nce_club"), "score")
    penalised = evaluate(train(2.0, "nce_club", representation="score"), "score")
    assert unpenalised["mi"] > 0.1, unpenalised
    assert penalised["mi"] < 0.3 * unpenalised["mi"], (unpenalised, penalised)
    assert penalised["corr_base"] > unpenalised["corr_base"] + 0.03, (unpenalised, penalised)


def test_crl_on_the_score_needs_no_representation() -> None:
    objective, builder = tiny_objective(None, CRLConfig(beta=1.0, representation="score"))
    assert objective.loss.critic is not None
    assert Loss(None, CRLConfig(beta=1.0, representation="score"), 1, [CONF]).critic is not None
    objective.train()
    loss, out = objective(builder(tiny_table(64, seed=5)))
    loss.backward()
    assert out.components[2] != 0  # the MI estimate of the 1-d Z
    assert all(p.grad is None for p in objective.loss.critic.parameters())


def test_confounder_bias_fits_the_confounders_own_effect_and_stays_out_of_the_model() -> None:
    """Known answer: with C drawn per row, independent of the user and the item, its effect on the
    label's logit, (c - 1.5) / 1.5, can only be fitted by the offsets; centred, they must recover it
    (measured: within 0.07 at seed 0). They live in the loss, not in the model that is exported."""
    objective, builder = tiny_objective(None, CRLConfig(beta=1.0, representation="score", confounder_bias=True))
    bias = objective.loss.confounder_bias
    assert bias is not None
    fit(objective, builder, tiny_table(TRAIN_STEPS * BATCH, seed=100, conf_per_row=True))
    offsets = bias.offsets[0].detach()
    truth = (torch.arange(CONF, dtype=torch.float32) - 1.5) / 1.5
    torch.testing.assert_close(offsets - offsets.mean(), truth, atol=0.15, rtol=0)
    assert not any("confounder_bias" in name for name in objective.model.state_dict())


def test_confounder_bias_is_centred_on_the_live_rows() -> None:
    assert Loss(None, CRLConfig(beta=0.0, confounder_bias=True), 1, [CONF]).confounder_bias is None  # CRL off
    bias = Loss(None, CRLConfig(beta=1.0, confounder_bias=True), 1, [CONF]).confounder_bias
    assert bias is not None
    with torch.no_grad():
        bias.offsets[0].copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    c = torch.tensor([[0], [1], [3], [3]])
    out = bias(c, torch.tensor([1.0, 1.0, 1.0, 0.0]))
    torch.testing.assert_close(out, torch.tensor([1.0, 2.0, 4.0, 4.0]) - 7.0 / 3)


# --- configuration --------------------------------------------------------------------------------------


@pytest.mark.parametrize("job", ["jobs/local.yaml", "jobs/cluster.yaml"])
def test_shipped_jobs_pass_validation(job: str) -> None:
    config = load_config(Path(__file__).parent.parent / job)
    assert config.crl.critic_steps == 2 and config.distill.schedule == "constant"


def test_valid_overrides_load() -> None:
    config = load_config(
        None,
        [
            "distill.loss=kl",
            "distill.temperature=2.0",
            "distill.schedule=linear_warmup",
            "distill.warmup_steps=500",
            "crl.estimator=club",
            "crl.critic_steps=5",
            "crl.warmup_steps=1000",
            "crl.beta=0",
        ],
    )
    assert (config.distill.warmup_steps, config.crl.critic_steps, config.crl.estimator) == (500, 5, "club")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["distill.temperature=2.0"], "needs distill.loss=kl"),
        (["distill.loss=mse"], "distill.loss must be one of"),
        (["distill.target=oracle"], "distill.target must be one of"),
        (["distill.schedule=cosine"], "distill.schedule must be one of"),
        (["distill.schedule=linear_warmup"], "needs distill.warmup_steps >= 1"),
        (["distill.warmup_steps=100"], "needs distill.schedule=linear_warmup"),
        (["distill.weight=-1"], "distill.weight must be >= 0"),
        (["distill.weight=nan"], "distill.weight must be >= 0"),
        (["distill.loss=kl", "distill.temperature=0"], "distill.temperature must be > 0"),
        (["distill.bank_size=0"], "distill.bank_size must be >= 1"),
        (["crl.estimator=mine"], "crl.estimator must be one of"),
        (["crl.beta=-0.1"], "crl.beta must be >= 0"),
        (["crl.critic_steps=0"], "crl.critic_steps must be >= 1"),
        (["crl.warmup_steps=-5"], "crl.warmup_steps must be >= 0"),
        (["crl.critic_lr=0"], "crl.critic_lr must be > 0"),
        (["crl.critic_hidden=0"], "crl.critic_hidden must be >= 1"),
        (["crl.representation=hidden"], "crl.representation must be one of"),
        (["train.valid_split=test_ood"], "train.valid_split must be one of"),
        (["train.valid_split=test_do"], "train.valid_split must be one of"),  # valid_do is its validation twin
        (["distill.mediator_samples=0"], "distill.mediator_samples must be >= 1"),
        (["distill.mediator_samples=4"], "needs mediator_dropout > 0 on every teacher"),
        (["student.mediator_dropout=1.0"], r"student.mediator_dropout must be in \[0, 1\)"),
    ],
)
def test_invalid_causal_settings_are_config_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, ["crl.estimator=mine", "distill.weight=-1"])
    assert "crl.estimator" in str(caught.value) and "distill.weight" in str(caught.value)


# --- under DistributedModelParallel and TrainPipelineSparseDist (2 ranks, gloo) ----------------------

DMP_STEPS = {0: 6, 1: 4}  # rank 1 runs out first and trains on padding batches for 2 steps


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dmp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        from torchrec.distributed.model_parallel import DistributedModelParallel, get_default_sharders
        from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
        from torchrec.distributed.types import ShardingEnv
        from torchrec.optim import RowWiseAdagrad
        from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
        from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
        from torchrec.optim.optimizers import in_backward_optimizer_filter

        from distrec.models.base import embedding_modules
        from distrec.train.sharding import make_planner

        torch.manual_seed(0)  # same seed on every rank, as in the training loop
        manifest = tiny_manifest()
        model = build_model("mlp", "student", manifest, 8, [16, 8], torch.device("meta"))
        crl = CRLConfig(beta=1.0, critic_steps=2, critic_lr=1e-2)
        objective = Objective(model, DistillConfig(weight=1.0), crl, list(manifest.confounders.values()))
        init = critic_state(objective.loss)
        tables = [p for m in embedding_modules(model) for p in m.parameters()]
        apply_optimizer_in_backward(RowWiseAdagrad, tables, {"lr": 0.05})
        planner = make_planner(objective, world, "cpu", [], 64)
        plan = planner.collective_plan(objective, get_default_sharders(), dist.GroupMember.WORLD)
        dmp = DistributedModelParallel(
            objective, env=ShardingEnv.from_process_group(dist.GroupMember.WORLD), device=torch.device("cpu"), plan=plan
        )
        dense = {k: v for k, v in in_backward_optimizer_filter(dmp.named_parameters()) if ".critic." not in k}
        optimizer = CombinedOptimizer(
            [dmp.fused_optimizer, KeyedOptimizerWrapper(dense, lambda ps: torch.optim.Adam(ps, lr=1e-2))]
        )
        pipeline = TrainPipelineSparseDist(dmp, optimizer, torch.device("cpu"), execute_all_batches=True)

        builder = BatchBuilder(manifest, [SOFT])
        live = [builder(tiny_table(64, seed=1000 * rank + i)) for i in range(DMP_STEPS[rank])]
        padding = [live[0].as_padding()] * (max(DMP_STEPS.values()) - DMP_STEPS[rank])
        everyone_padding = [live[0].as_padding()]  # lockstep never yields this; the objective must cope
        batches: list[Batch] = live + padding + everyone_padding
        it = iter(batches)
        losses = []
        while True:
            try:
                out = pipeline.progress(it)
            except StopIteration:
                break
            losses.append(out.loss.item())
        loss_module = dmp.module.loss
        critic = loss_module.critic
        torch.save(
            {
                "losses": losses,
                "init": init,
                "critic": {k: v.detach().clone() for k, v in critic.state_dict().items()},
                "critic_grads_none": all(p.grad is None for p in critic.parameters()),
                "critic_adam_steps": sorted(
                    {loss_module.critic_optimizer().state[p]["step"].item() for p in critic.parameters()}
                ),
                "dense": {k: v.detach().clone() for k, v in dense.items()},
                "dense_has_grad": sum(v.grad is not None for v in dense.values()),
                "step": loss_module.step.item(),
                "pipelined": len(pipeline._pipelined_modules),
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_critic_under_dmp_and_train_pipeline(tmp_path: Path) -> None:
    mp.spawn(_dmp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    global_steps = max(DMP_STEPS.values())
    for r in (r0, r1):
        assert r["pipelined"] >= 1  # the pipeline's FX trace found the sharded embedding module
        assert len(r["losses"]) == global_steps + 1 and all(math.isfinite(x) for x in r["losses"])
        assert r["critic_grads_none"]  # DDP left the critic's .grad alone: no gradient reached it
        assert r["critic_adam_steps"] == [2 * global_steps]  # 2 per step with a live row on some rank
        assert r["step"] == global_steps  # the all-padding step does not count
        assert r["dense_has_grad"] > 0
    assert r1["losses"][DMP_STEPS[1] :] == [0.0] * (global_steps - DMP_STEPS[1] + 1)  # padding: loss 0
    for k, v in r0["critic"].items():
        assert torch.equal(v, r1["critic"][k]), k  # replicas identical, also through rank 1's padding
        assert torch.equal(r0["init"][k], r1["init"][k]), k  # the same seed: the same initial critic
        assert not torch.equal(v, r0["init"][k]), k  # and trained
    for k, v in r0["dense"].items():
        assert torch.equal(v, r1["dense"][k]), k  # DDP's replicas, for comparison


# --- the critic's optimiser state in checkpoints ---------------------------------------------------------


def test_checkpoint_restores_the_critics_adam_state(tmp_path: Path) -> None:
    """A student resumed from a checkpoint takes the same critic steps as one never stopped: the
    critic's own Adam moments and step count travel with the sharded checkpoint (one gloo rank)."""
    from torchrec.optim.keyed import KeyedOptimizerWrapper

    from distrec.train import checkpoint

    crl = CRLConfig(beta=1.0, critic_steps=2, critic_lr=1e-2)

    def main_optimizer(objective: Objective) -> KeyedOptimizerWrapper:
        dense = {n: p for n, p in objective.named_parameters() if ".critic." not in n}
        return KeyedOptimizerWrapper(dense, lambda ps: torch.optim.Adam(ps, lr=1e-2))

    def step(objective: Objective, optimizer: KeyedOptimizerWrapper, seed: int) -> None:
        loss, _ = objective(builder(tiny_table(64, seed=seed)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        group = dist.new_group(backend="gloo")
        first, builder = tiny_objective(DistillConfig(weight=1.0), crl, seed=0)
        first.train()
        first_opt = main_optimizer(first)
        for seed in (20, 21):
            step(first, first_opt, seed)
        progress = torch.zeros(3, dtype=torch.float64)
        checkpoint.save(first, first_opt, progress, tmp_path / "dcp", group)

        second, _ = tiny_objective(DistillConfig(weight=1.0), crl, seed=1)  # other initial weights
        second.train()
        second_opt = main_optimizer(second)
        checkpoint.load(second, second_opt, tmp_path / "dcp", group, progress)
        saved, loaded = first.loss.critic_optimizer(), second.loss.critic_optimizer()
        assert saved is not None and loaded is not None
        assert [loaded.state[p]["step"].item() for p in second.loss.critic.parameters()] == [4.0] * len(
            list(first.loss.critic.parameters())
        )
        for objective, optimizer in ((first, first_opt), (second, second_opt)):
            step(objective, optimizer, 22)
        for (name, p), q in zip(first.named_parameters(), second.parameters(), strict=True):
            torch.testing.assert_close(p, q, msg=name)
    finally:
        dist.destroy_process_group()


# --- one rank steps without TorchRec's pipeline ------------------------------------------------------------


def _one_rank_worker(rank: int, port: int, out_dir: str) -> None:
    """The same student trained twice at world size 1 from the same seed: by ``build_training``'s own
    ``pipeline`` (DirectSteps) and by TorchRec's TrainPipelineSparseDist over a second copy."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        torch.set_num_threads(1)
        from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

        from distrec.config import ModelConfig, TrainConfig
        from distrec.train.export import gather_state_dict
        from distrec.train.loop import DirectSteps, WorkerTask, build_training

        manifest = tiny_manifest()
        task = WorkerTask(
            model=ModelConfig(name="student", arch="mlp", dim=8, hidden=[16, 8]),
            train=TrainConfig(num_workers=1, batch_size=64),
            dataset="",
            soft_label_columns=[SOFT],
            distill=DistillConfig(weight=1.0),
            crl=CRLConfig(beta=1.0, critic_steps=2, critic_lr=1e-2),
        )
        builder = BatchBuilder(manifest, [SOFT])
        batches = [builder(tiny_table(64, seed=i)) for i in range(6)]
        results = {}
        for name in ("direct", "pipelined"):
            torch.manual_seed(0)
            training = build_training(task, manifest, 1, torch.device("cpu"))
            pipeline = training.pipeline
            assert isinstance(pipeline, DirectSteps)
            if name == "pipelined":
                pipeline = TrainPipelineSparseDist(training.dmp, training.optimizer, torch.device("cpu"))
            it = iter(batches)
            losses = []
            while True:
                try:
                    losses.append(pipeline.progress(it).loss.item())
                except StopIteration:
                    break
            state = gather_state_dict(training.dmp, "")  # the tables unsharded, the critic and dense layers
            results[name] = {"losses": losses, "state": state}
        torch.save(results, Path(out_dir) / "one_rank.pt")
    finally:
        dist.destroy_process_group()


def test_one_rank_direct_steps_train_as_torchrecs_pipeline(tmp_path: Path) -> None:
    """A rank alone steps without TorchRec's pipeline (``DirectSteps``: nothing to overlap); the losses of
    every step and every trained weight equal the pipeline's."""
    mp.spawn(_one_rank_worker, args=(_free_port(), str(tmp_path)), nprocs=1, join=True)
    results = torch.load(tmp_path / "one_rank.pt")
    direct, pipelined = results["direct"], results["pipelined"]
    assert len(direct["losses"]) == 6 and direct["losses"] == pytest.approx(pipelined["losses"], rel=1e-6)
    assert direct["state"].keys() == pipelined["state"].keys()
    for key, value in direct["state"].items():
        torch.testing.assert_close(value, pipelined["state"][key], rtol=1e-5, atol=1e-6, msg=key)
