"""The training step as one compiled graph (nla/step_graph.py), checked on the CPU as its CUDA twin: it compiles with
fullgraph=True, does not recompile across epochs, matches the eager step, keeps the non-finite promise, runs the short
last batch without a second graph, and trains through nla fit. (The GPU's CUDA graph is the same function under
``mode="reduce-overhead"``. The comparison with the eager step traces it with aot_eager, forward and backward as
inductor sees them, without generating code; the other tests (guards, recompiles, outputs, nla fit's wiring) need
only dynamo's own trace, the ``eager`` backend, in about a third of the time. fullgraph=True holds for both.)"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import torch
import torch._dynamo.utils
from torch.utils._pytree import tree_flatten, tree_unflatten

from nla import NLAModule
from nla.batch import FaceBatch
from nla.cli import main
from nla.nonfinite import NonFiniteError
from nla.step_graph import GraphStep, trainer_conflicts
from tests.conftest import fit_args

pytestmark = pytest.mark.slow  # each test compiles a step (seconds)
TRACE = "eager"  # dynamo's trace alone: fullgraph=True still makes a graph break an error


def module(**settings) -> NLAModule:
    torch.manual_seed(0)
    return NLAModule(backbone="test_resnet", num_classes=7, channels_last=False, **settings)


def adam(model: NLAModule) -> torch.optim.Adam:
    return torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)


def batches(count: int, size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    out = []
    for _ in range(count):
        images = torch.randn(size, 3, 32, 32, generator=generator)
        out.append((torch.cat([images, images.flip(-1)]), torch.randint(0, 7, (size,), generator=generator)))
    return out


def eager_gradients(model: NLAModule, views: torch.Tensor, labels: torch.Tensor, schedule: float) -> tuple[float, dict]:
    """The eager step's loss and gradients at ``model``'s weights (on a copy: the model is left as it is)."""
    twin = copy.deepcopy(model)
    output = twin.criterion_output(views, labels, schedule=torch.tensor(schedule))
    output.total.backward()
    return output.total.item(), {name: p.grad for name, p in twin.named_parameters()}


MOMENTS = ("exp_avg", "exp_avg_sq")


def close(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> bool:
    """Equal up to ``rtol`` of the tensor's own scale: float sums taken in another order (another CPU's vector units,
    a compiled graph's fusion) differ by about 1e-7 of it, an entry near zero included."""
    return bool(((actual - expected).abs() <= rtol * expected.abs().max().clamp_min(1e-12)).all())


def test_the_graph_step_compiles_whole_and_matches_eager_step_by_step():
    """Each compiled step against the eager step from the same weights. Adam turns the tiny differences of float sums
    into steps of the learning rate's size (a weight whose gradient is near zero moves by about lr either way), so
    after a few steps the weights of two correct implementations part on some CPUs and not on others. Compared where
    nothing amplifies them: the loss, Adam's moments (the gradients, scaled) against the eager gradients, and each
    weight's update against Adam's formula on the graph's own moments."""
    model = module()
    optimizer = adam(model)
    step = GraphStep(model, optimizer, backend="aot_eager", mode=None)  # fullgraph=True: a break is an error
    step.set_epoch(0.4, 1e-3)
    (beta1, beta2), eps, decay = optimizer.param_groups[0]["betas"], 1e-8, 1e-4
    for k, (views, labels) in enumerate(batches(3), start=1):
        loss, grads = eager_gradients(model, views, labels, schedule=0.4)
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        moments = {  # Adam's state before the step (the graph updates it in place); none before the first
            name: [optimizer.state[p][key].clone() if optimizer.state[p] else torch.zeros_like(p) for key in MOMENTS]
            for name, p in model.named_parameters()
        }
        assert step(views, labels).output.total.item() == pytest.approx(loss, rel=1e-5)
        for name, p in model.named_parameters():
            state = optimizer.state[p]
            g = grads[name] + decay * before[name]
            m0, v0 = moments[name]
            assert close(state["exp_avg"], beta1 * m0 + (1 - beta1) * g, rtol=1e-4), name
            assert close(state["exp_avg_sq"], beta2 * v0 + (1 - beta2) * g * g, rtol=1e-4), name
            assert state["step"].item() == k
            bias1, bias2 = 1 - beta1 ** state["step"], (1 - beta2 ** state["step"]) ** 0.5  # in float32, as Adam does
            update = 1e-3 / bias1 * state["exp_avg"] / (state["exp_avg_sq"].sqrt() / bias2 + eps)
            assert close(p.detach(), before[name] - update, rtol=1e-5), name
    assert set(optimizer.state[next(model.parameters())]) == {"step", "exp_avg", "exp_avg_sq"}  # a checkpoint is Adam's


def test_a_new_epoch_and_the_short_last_batch_compile_nothing_more():
    model = module()
    optimizer = adam(model)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)  # as nla fit steps it, once an epoch
    step = GraphStep(model, optimizer, backend=TRACE, mode=None)
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for epoch, (views, labels) in enumerate(batches(3)):
        lr = optimizer.param_groups[0]["lr"]
        step.set_epoch(1 - 0.5**epoch, lr)  # the scheduler and the learning rate change each epoch
        step(views, labels)
        scheduler.step()
    short_views, short_labels = batches(1, size=3)[0]
    result = step(short_views, short_labels)  # the epoch's last batch, 3 images: run eagerly, every sample trained
    assert len(result.output.probs) == 3
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - before == 1


def test_outputs_are_copied_out_of_the_graphs_buffers():
    """A CUDA graph's outputs live in buffers its next replay overwrites. A stand-in graph that writes every step's
    outputs into the same tensors, as a replay does, shows that what a step returns is the step's own."""
    model = module()
    step = GraphStep(model, adam(model), backend=TRACE, mode=None)
    step.set_epoch(0.0, 1e-3)
    held: list[Any] = []

    def replay(views: torch.Tensor, labels: torch.Tensor) -> Any:
        fresh, spec = tree_flatten(step.step(views, labels))
        if not held:
            held.extend(t.clone() if isinstance(t, torch.Tensor) else t for t in fresh)
        for buffer, value in zip(held, fresh):
            if isinstance(buffer, torch.Tensor):
                buffer.copy_(value)
        return tree_unflatten(list(held), spec)

    step.compiled = replay
    data = batches(2)
    first = step(*data[0])
    kept = [first.output.total.clone(), first.output.probs.clone(), first.output.weights.clone()]
    step(*data[1])
    assert all(torch.equal(a, b) for a, b in zip(kept, [first.output.total, first.output.probs, first.output.weights]))
    assert not torch.equal(held[1], kept[1])  # the stand-in did overwrite its buffers


def test_a_process_fits_any_number_of_times_with_the_graph_step():
    """torch.compile keeps at most ``recompile_limit`` graphs per code object (8): each GraphStep compiles a code
    object of its own. The limit is lowered to 1 here so that a second fit crosses it."""
    views, labels = batches(1, size=2)[0]
    with torch._dynamo.config.patch(recompile_limit=1):
        for _ in range(2):
            model = module()
            step = GraphStep(model, adam(model), backend=TRACE, mode=None)
            step.set_epoch(0.5, 1e-3)
            assert torch.isfinite(step(views, labels).output.total)


def test_a_non_finite_step_changes_no_weight_and_stops_the_run():
    model = module()
    optimizer = adam(model)
    step = GraphStep(model, optimizer, backend=TRACE, mode=None)
    step.set_epoch(0.0, 1e-3)
    views, labels = batches(1)[0]
    step(views, labels)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    result = step(views * float("nan"), labels)
    assert not result.finite
    model.loss_watch.note(result.output.total, (result.output.classification, result.output.consistency), 0, 1)
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters())
    assert step(views, labels).finite.item() is False  # every later step is skipped too
    with pytest.raises(NonFiniteError, match="non-finite loss at epoch 0, step 1"):
        model.loss_watch.check()


@pytest.mark.slow
def test_nla_fit_trains_and_resumes_with_the_graph_step(rafdb_root, tmp_path):
    run_dir = tmp_path / "run"
    graph = ["--model.step_graph", "true", "--model.compile_backend", TRACE]
    main(fit_args(rafdb_root, run_dir, *graph, "--model.lr_gamma", "0.5", epochs=2))
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 12  # 42 images in batches of 8: 6 a epoch, the short one included
    assert checkpoint["lr_schedulers"][0]["last_epoch"] == 2  # stepped once per epoch
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1e-4 * 0.5**2)
    main(fit_args(rafdb_root, run_dir, *graph, "--ckpt_path", "last", epochs=3))  # Adam's state carries on
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [e["epoch"] for e in summary["epochs"]] == [0, 1, 2]


def test_a_face_batch_trains_through_the_graph_step_as_nla_fit_calls_it():
    model = module(step_graph=True, compile_backend=TRACE)
    optimizer = adam(model)
    model.graph_step = GraphStep(model, optimizer, backend=TRACE, mode=None)
    model.graph_step.compiled = model.graph_step.step  # the wiring, uncompiled: nla fit's tests compile it
    model.graph_step.set_epoch(0.0, 1e-3)

    class Optimizer:  # what Lightning's LightningOptimizer does with the closure
        def step(self, closure):
            return optimizer.step(closure)

    model.optimizers = lambda: Optimizer()
    views, labels = batches(1)[0]
    out = model.training_step(FaceBatch(views[:8], labels, index=torch.arange(8), views=views), 0)
    assert out["probs"].shape == (8, 7) and torch.equal(out["index"], torch.arange(8)) and "weights" in out
    assert optimizer.state[next(model.parameters())]["step"].item() == 1


def test_what_the_graph_reads_besides_its_arguments_keeps_its_memory():
    """A CUDA graph replays on fixed addresses: a module tensor the step reads that moves makes it record itself
    again every step (and give up after 128). So the weights, every buffer (the loss watch's flag, the meter's sums)
    and Adam's state stay where they are through steps as nla fit runs them."""
    model = module(step_graph=True, compile_backend=TRACE)
    optimizer = adam(model)
    model.graph_step = GraphStep(model, optimizer, backend=TRACE, mode=None)
    model.graph_step.set_epoch(0.5, 1e-3)

    class Optimizer:  # what Lightning's LightningOptimizer does with the closure
        def step(self, closure):
            return optimizer.step(closure)

    model.optimizers = lambda: Optimizer()
    adam_state = [t for p in model.parameters() for t in optimizer.state[p].values()]
    fixed = dict(model.named_parameters()) | dict(model.named_buffers())
    fixed |= {f"adam {i}": t for i, t in enumerate(adam_state)}
    addresses = {name: t.data_ptr() for name, t in fixed.items()}
    for views, labels in batches(3):
        model.training_step(FaceBatch(views[:8], labels, views=views), 0)
    assert optimizer.state[next(model.parameters())]["step"].item() == 3
    now = dict(model.named_parameters()) | dict(model.named_buffers())
    now |= {f"adam {i}": t for i, t in enumerate(t for p in model.parameters() for t in optimizer.state[p].values())}
    assert {name: t.data_ptr() for name, t in now.items()} == addresses


def test_every_input_the_compiled_step_updates_is_fixed_in_memory():
    """What a CUDA graph asks before capturing (torch's cudagraph trees): each input the graph updates in place is a
    static address (parameters, module buffers, tensors marked so). Checked on the graph dynamo hands its backend."""
    graphs: list[Any] = []

    def backend(graph_module: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        graphs.append((graph_module, example_inputs))
        return graph_module.forward

    model = module()
    step = GraphStep(model, adam(model), backend=backend, mode=None)
    step.set_epoch(0.5, 1e-3)
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        step.compiled(*batches(1)[0])
    (graph_module, inputs), *_ = graphs
    placeholders = {node: i for i, node in enumerate(n for n in graph_module.graph.nodes if n.op == "placeholder")}

    def input_of(node: Any) -> Any:  # through views and indexing to the graph's input, if it is one
        while isinstance(node, torch.fx.Node) and node not in placeholders:
            node = node.args[0] if node.args else None
        return inputs[placeholders[node]] if isinstance(node, torch.fx.Node) else None

    updated = {
        node.args[0].name: input_of(node.args[0])
        for node in graph_module.graph.nodes
        if node.op == "call_method"
        and node.target.endswith("_")
        and input_of(node.args[0] if node.args else None) is not None
    }
    assert len(updated) > len(list(model.parameters()))  # the weights, Adam's state, the meter's sums
    moving = [name for name, t in updated.items() if not torch._dynamo.utils.get_static_address_type(t)]
    assert not moving


def test_a_trainer_that_clips_or_accumulates_is_refused_before_the_first_step():
    """Lightning's clipping and accumulation act in its automatic optimisation, which the graph step replaces: a
    module used without nla's command line refuses them at setup instead of training without them. (So does
    float16's loss scaling, which Lightning uses only on a GPU: tests/cli/test_faults_input.py.)"""
    from lightning.pytorch import Trainer

    from nla.errors import ConfigError

    refused = (
        ({"gradient_clip_val": 1.0}, "clip gradients"),
        ({"accumulate_grad_batches": 2}, "accumulate gradients"),
    )
    for settings, said in refused:
        model = module(step_graph=True, compile_backend=TRACE)
        trainer = Trainer(max_epochs=1, logger=False, enable_checkpointing=False, **settings)
        data = torch.utils.data.DataLoader(list(zip(*batches(1, size=4)[0])), batch_size=4)
        with pytest.raises(ConfigError, match=said):
            trainer.fit(model, train_dataloaders=data)
        assert model.graph_step is None
    said = trainer_conflicts(None, 1, "bf16-mixed", world_size=4)  # DDP: each process would train its own model
    assert said and "does not average gradients between processes (this trainer runs 4" in said
    assert trainer_conflicts(None, 1, "bf16-mixed", world_size=1) is None
