"""Test tiers.

- runtime tier: tests/runtime (and serve, dataset): needs only `pip install '.[cpu,test]'` (numpy, onnxruntime,
  onnx to build tiny bundles), never torch;
- export tier: tests/export, recipes, imagenet, bench: needs torch (scripts/test.sh installs the CPU build);
  without torch these folders are not collected, and the header says so;
- `-m "not slow"` leaves out the slow tests (the wheel build, the full benchmark run, full-size ImageNet graphs).
"""

import importlib.util

TORCH_TIERS = ["export", "recipes", "imagenet", "bench"]
HAS_TORCH = importlib.util.find_spec("torch") is not None

collect_ignore = [] if HAS_TORCH else TORCH_TIERS


def pytest_report_header(config):
    if not HAS_TORCH:
        return (
            f"torch is not installed: the export tier ({', '.join('tests/' + t for t in TORCH_TIERS)}) is not collected"
        )
    return None
