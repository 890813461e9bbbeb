"""A CPU smoke run of benchmarks/throughput.py with tiny settings: it measures every path it reports."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"
MEASURED = (
    "fast_samples_per_s",
    "reference_samples_per_s",
    "roof_samples_per_s",
    "fast_peak_mem_mb",
    "fast_pipeline_images_per_s",
    "reference_pipeline_images_per_s",
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
