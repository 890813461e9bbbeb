"""A CPU smoke run of benchmarks/throughput.py with tiny settings."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"


@pytest.mark.slow
def test_throughput_benchmark_runs_on_the_cpu(tmp_path):
    spec = importlib.util.spec_from_file_location("throughput", SCRIPT)
    throughput = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(throughput)
    output = tmp_path / "result.json"
    throughput.main(["--device", "cpu", "--steps", "2", "--warmup", "1", "--batch-size", "4", "--image-size", "32",
                     "--workers", "0", "--pipeline-steps", "2", "--rounds", "2", "--synthetic-images", "70",
                     "--json", str(output)])
    result = json.loads(output.read_text())
    for key in ("fast_samples_per_s", "reference_samples_per_s", "roof_samples_per_s", "fast_peak_mem_mb",
                "fast_pipeline_images_per_s", "reference_pipeline_images_per_s"):
        assert result[key] > 0, key
    assert result["fast_over_reference"] == pytest.approx(result["fast_samples_per_s"] / result["reference_samples_per_s"])
