"""A CPU smoke run of benchmarks/throughput.py with tiny settings: it measures every path it reports; how the GPU
kit's side-by-side phase turns the runs' logs into samples per second; and what host_overhead.py's kernel count
counts."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

from tests.conftest import CONFIGS

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"
MEASURED = (
    "fast_samples_per_s",
    "reference_samples_per_s",
    "roof_samples_per_s",
    "fast_peak_mem_mb",
    "fast_pipeline_images_per_s",
    "reference_pipeline_images_per_s",
    "graph_samples_per_s",
)


@pytest.mark.slow
def test_throughput_benchmark_measures_every_path_on_the_cpu(tmp_path):
    spec = importlib.util.spec_from_file_location("throughput", SCRIPT)
    throughput = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(throughput)
    output = tmp_path / "result.json"
    returned = throughput.main(
        [
            "--device",
            "cpu",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--batch-size",
            "4",
            "--image-size",
            "32",
            "--workers",
            "0",
            "--pipeline-steps",
            "2",
            "--rounds",
            "2",
            "--synthetic-images",
            "70",
            "--step-graph",
            "--graph-backend",
            "eager",
            "--graph-warmup",
            "1",
            "--json",
            str(output),
        ]
    )
    result = json.loads(output.read_text())
    assert result == json.loads(json.dumps(returned))  # what is printed is what is written
    for key in MEASURED:
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert result["device"].startswith(("x86_64", "aarch64", "arm64", "i386")) and result["steps"] == 2
    assert result["precision"] == "32-true" and len(result["pipeline_ratio_range"]) == 2
    assert result["graph_over_fast"] == pytest.approx(result["graph_samples_per_s"] / result["fast_samples_per_s"])


def test_side_by_side_paces_come_from_the_epoch_lines_after_the_first(tmp_path, monkeypatch):
    from benchmarks.gpu import parallel

    clock = [0.0]
    monkeypatch.setattr(parallel.time, "monotonic", lambda: clock[0])
    watch = parallel.EpochWatch(tmp_path)
    logs = {name: tmp_path / name / "fit.log" for name in ("seed1", "seed2")}
    for log in logs.values():
        log.parent.mkdir()
        log.write_text("RAFDBDataModule train: 1200 images {...}\n")
    # seed1 ends an epoch at 30 s (compiling), then every 10 s; seed2 at 40 s, then every 20 s
    for t, ended in ((30, ["seed1"]), (40, ["seed1", "seed2"]), (50, ["seed1"]), (60, ["seed1", "seed2"])):
        clock[0] = t
        for name in ended:
            with logs[name].open("a") as log:
                log.write("epoch 1/4  train loss 1.0  val acc 50.0%\n")
        watch.poll()
    paces = {p["run"]: p for p in watch.paces()}
    assert paces["seed1"]["epoch_s"] == 10 and paces["seed1"]["samples_per_s"] == 120
    assert paces["seed2"]["epoch_s"] == 20 and paces["seed2"]["samples_per_s"] == 60


def test_the_gpu_call_counts_what_torch_says_about_the_compiled_step(tmp_path):
    """The GPU call sets TORCH_LOGS so that torch names each recompile of the graph step, each unexpected
    re-recording of its CUDA graph and each reason one was skipped; a phase's record counts those lines."""
    import sys
    import time

    from benchmarks.gpu.call import Process

    lines = [
        "epoch 1/60  train loss 1.2",
        "V1205 [0/1] [__recompiles] Recompiling function step in nla/step_graph.py:105",
        "W1205 skipping cudagraphs due to mutated inputs (186 instances). Found from :",
        "D1205 [0/0] Re-recording function=step, reason=static input data pointer changed.",
        "D1205 [0/0] Re-recording function=step, reason=static input data pointer changed.",
    ]
    script = "import sys; sys.stdout.write(sys.argv[1])"
    process = Process("fit", [sys.executable, "-c", script, "\n".join(lines) + "\n"], tmp_path)
    while process.poll() is None:
        time.sleep(0.01)
    notes = process.compile_notes()
    assert (notes["recompiles"], notes["cudagraph_rerecords"], notes["cudagraph_skips"]) == (1, 2, 1)
    assert notes["cudagraph_skips_first"] == [lines[2]] and process.epochs[0][:2] == (1, 60)


def test_the_kernel_counter_names_the_part_that_called_each_operation():
    """benchmarks/host_overhead.py's count: the criterion's calls into torch.nn.functional are the criterion's (not the
    model's), allocations are not kernels, and the backward pass is counted apart."""
    import torch

    from benchmarks.host_overhead import KernelCount
    from nla.criterion import Criterion

    torch.manual_seed(0)
    z, z_mirror, y = torch.randn(8, 7, requires_grad=True), torch.randn(8, 7), torch.randint(0, 7, (8,))
    with KernelCount() as forward:
        total = Criterion()(z, y, 0, 10, logits_mirror=z_mirror).total
    with KernelCount() as backward:
        total.backward()
        torch.empty(3)
    assert set(forward.parts) == {"criterion"} and forward.ops["_log_softmax"] == 3  # the image, the mirror, the mix
    assert "empty" not in backward.ops  # torch.empty: an allocation only
    assert backward.parts["other"] == backward.ops["ones_like"] == 1  # .backward()'s seed, before any autograd node
    assert backward.ops["_log_softmax_backward_data"] >= 1


@pytest.mark.slow
def test_the_gpu_calls_face_start_is_dlibs_network_in_float16_with_its_input(tmp_path, capsys):
    """benchmarks/gpu/face.py: the face start's tensors in float16 (what fits a call), and nla fit options that
    rebuild the same network with the face start's input size and normalisation."""
    import torch
    import yaml

    from benchmarks.gpu import face
    from nla import NLAModule
    from nla.backbones.starts import backbone_input
    from nla.cli import main
    from tests.backbones.dlib_files import tiny_face_network, write_face_network

    dat = write_face_network(tmp_path / "tiny.dat", tiny_face_network())
    settings = face.convert(dat, tmp_path / "face")
    saved = torch.load(tmp_path / "face" / face.WEIGHTS, weights_only=True)
    assert {value.dtype for value in saved.values()} == {torch.float16} and not any(k.startswith("fc.") for k in saved)
    spec = backbone_input(face.BACKBONE, "face")
    assert (settings["image_size"], settings["mean"], settings["std"]) == (spec.size, list(spec.mean), list(spec.std))
    assert settings["widths"] == [2, 3, 4, 4, 5] and 0 < settings["float16_features_relative_error"] < 1e-2

    arguments = face.fit_arguments(tmp_path / "face")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS / "rafdb.yaml"), *arguments, "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    model, preprocessing = config["model"], config["data"]["init_args"]["preprocessing"]
    assert (model["pretrained"], model["pretrained_weights"]) == ("none", str(tmp_path / "face" / face.WEIGHTS))
    assert preprocessing == {"image_size": spec.size, "mean": list(spec.mean), "std": list(spec.std)}

    widths = {"widths": settings["widths"]}
    torch.manual_seed(0)
    started = NLAModule(face.BACKBONE, "face", widths, 7, pretrained_weights=str(dat))
    torch.manual_seed(0)
    rounded = NLAModule(
        face.BACKBONE, "none", model["backbone_args"], 7, pretrained_weights=model["pretrained_weights"]
    )
    images = torch.randn(2, 3, spec.size, spec.size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        exact, near = started.eval()(images), rounded.eval()(images)
    assert torch.equal(started.model.fc.weight, rounded.model.fc.weight)  # the head starts as the face start's
    assert 0 < float((near - exact).norm() / exact.norm()) < 1e-2  # float16's rounding, nothing more


def test_the_call_count_leaves_out_warm_up_and_the_steps_that_cross_an_epochs_end():
    from benchmarks.host_overhead import CallCount, package_of

    def work(calls: int) -> None:
        for _ in range(calls):
            package_of("/x/site-packages/lightning/a.py")  # one call of benchmarks/host_overhead.py each

    counter = CallCount(start=1, stop=5)
    # (batch index in its epoch, calls until the next batch starts): warm-up 50; a step that ends in the next
    # epoch (its end's figures and checkpoint) 100
    for batch_idx, calls in [(0, 50), (1, 2), (2, 100), (0, 2), (1, 7), (2, 0)]:
        counter.on_train_batch_start(None, None, None, batch_idx)
        work(calls)
    counter.on_train_end(None, None)
    counts = counter.per_step()
    assert counts["steps"] == 3
    assert counts["benchmarks"] == pytest.approx((2 + 2 + 7) / 3 + 1, abs=0.05)  # + the hook's own call
