"""`python -m bench`: the speed claim measured side by side in one run; writes results.{json,md,png}.

The machine's bound (measured read bandwidth and float32 GEMM throughput, at the start and at the
end; the better of the two) is always measured. Sections (all by default; pick with --sections):
- imagenet: DeePSiM fc6 + CaffeNet with random weights of the real shapes (exported once into the
            cache): latent path (class_grad) against composite path, per step and per image;
- default:  the same on the shipped default bundle (onnx_models/fashion-colors), when present;
- eager:    the same latent (and, at batch 1, composite) method in PyTorch eager against the runtime;
- variants: faster ways to run the latent step (session options, IO binding, fused Loop, int8/fp16);
- precision: the default bundle's samples with float32 and with int8 class_grad weights, judged by
            the fashion recipe's independent evaluator (needs its checkpoint, --evaluator);
- cuda:     on the CUDA provider, the runtime's loop (a host round trip per step) against loops that keep z
            on the device (IO binding, a step graph, captured CUDA graphs, a fused Loop), both bundles
            (bench/cuda.py); skipped where ONNX Runtime has no CUDA provider;
- coldstart: process start to first image, and peak memory, of `latent-onnx generate`.
- dataset:  images per second of `latent-onnx dataset` on the default bundle: local 1 and 2 workers,
            Ray with 2 actors, at equal cores (bench/dataset.py).
- serve:    requests per second and p50 / p99 latency of `latent-onnx serve` (n = 1 requests, 1, 4 and 16
            clients) on the default bundle, against the Python API in the same process (bench/serve.py).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import statistics
import sys
from pathlib import Path

import click
import numpy as np
import onnx

from bench.machine import GraphCost, MachineBounds, best_bounds, graph_cost, measure_machine
from bench.report import write_results

SECTIONS = ("imagenet", "default", "eager", "variants", "cuda", "precision", "coldstart", "dataset", "serve")
REPO = Path(__file__).resolve().parent.parent
DEFAULT_BUNDLE = REPO / "onnx_models" / "fashion-colors"


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_caches() -> str:
    """The first CPU's L2 and L3 from sysfs, e.g. "L2 2 MiB per core, L3 480 MiB" ("" where sysfs has none)."""
    parts = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = int((index / "level").read_text())
            size = (index / "size").read_text().strip()
            shared = (index / "shared_cpu_list").read_text().strip()
        except (OSError, ValueError):
            continue
        if level < 2 or not size.endswith("K"):
            continue
        mib = int(size[:-1]) / 1024
        per_core = "" if ("-" in shared or "," in shared) else " per core"
        parts.append(f"L{level} {mib:g} MiB{per_core}")
    return ", ".join(parts)


def _cpu_features() -> str:
    """The matrix units the runtime's kernels use where present: AVX-512 VNNI, AMX (from /proc/cpuinfo)."""
    try:
        flags = next(
            line.split(":", 1)[1].split()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        )
    except (OSError, StopIteration):
        return ""
    names = {"avx512_vnni": "AVX-512 VNNI", "amx_tile": "AMX"}
    return ", ".join(label for flag, label in names.items() if flag in flags) or "no AVX-512 VNNI or AMX"


def _machine() -> str:
    """The CPU model, cores, caches and matrix units, as every figure quotes them."""
    return ", ".join(filter(None, [_cpu_name(), f"{os.cpu_count()} cores", _cpu_caches(), _cpu_features()]))


def _first_class(pipe) -> str:
    return "11" if len(pipe.bundle.classes) > 11 else "0"


def time_bundle(pipe, batches, latent_steps: int, composite_steps: int, say, cache: Path) -> dict:
    """Latent (float32 and int8 weights) and composite timings of one bundle at each batch size, and their ratios.

    The int8 latent path is `Pipeline.generate` on an int8 copy of the bundle written into `cache`
    (bench.precision.int8_bundle), opened as users open a converted bundle (the runtime's session choice included).
    """
    from bench.precision import int8_bundle
    from bench.steps import time_path
    from export_tools.quantize import int8_dynamic_model
    from latent_onnx import Pipeline

    classes = _first_class(pipe)
    int8_pipe = Pipeline.from_bundle(
        int8_bundle(pipe.bundle, int8_dynamic_model, cache / "int8"),
        device=pipe.factory.device,
        threads=pipe.factory.threads,
    )
    runs = [("latent", pipe, "latent"), ("latent-int8", int8_pipe, "latent")]
    if pipe.bundle.has_graph("composite_class_grad"):
        runs.append(("composite", pipe, "composite"))
    timings = []
    for batch in batches:
        for label, runner, path in runs:
            steps = latent_steps if path == "latent" else composite_steps
            timing = dataclasses.replace(
                time_path(runner, classes, path, batch, steps, repeats=3 if path == "latent" else 1), path=label
            )
            say(
                f"  {pipe.bundle.name} {label} batch {batch}: {timing.step_s * 1e3:.2f} ms/step, {timing.image_s * 1e3:.1f} ms/image"
            )
            timings.append(timing.to_dict())
    ratios = []
    for batch in batches:
        by_path = {t["path"]: t for t in timings if t["batch"] == batch}
        if "composite" in by_path:
            ratios.append(
                {
                    "batch": batch,
                    **{
                        f"{kind}_ratio{suffix}": by_path["composite"][f"{kind}_s"] / by_path[latent][f"{kind}_s"]
                        for kind in ("step", "image")
                        for latent, suffix in (("latent", ""), ("latent-int8", "_int8"))
                    },
                }
            )
    cost = graph_cost(onnx.load_from_string(pipe.bundle.graph_bytes("class_grad")))
    return {
        "bundle": pipe.bundle.name,
        "provider": pipe.runner("class_grad").provider,
        "latent_dim": pipe.bundle.latent_dim,
        "default_steps": pipe.sampler_config(condition="class").steps,
        "class": classes,
        "timings": timings,
        "ratios": ratios,
        "latent_cost": dataclasses.asdict(cost),
    }


def apply_bounds(results: dict, bounds: MachineBounds) -> None:
    """Add the roofline bound of the latent step and the fraction of it reached to every latent timing."""
    for key in ("imagenet", "default"):
        section = results.get(key, {})
        if "timings" not in section or section["provider"] != "CPUExecutionProvider":
            continue  # the bound is the CPU's
        cost = GraphCost(**section["latent_cost"])
        for timing in section["timings"]:
            if timing["path"].startswith("latent"):  # int8: against the float32 bound
                timing["bound_s"] = bound = cost.bound_seconds(bounds, timing["batch"])
                timing["step_fraction_of_bound"] = bound / timing["step_s"]
                timing["graph_fraction_of_bound"] = bound / timing["graph_s"]
    if "variants" in results:
        cost = GraphCost(**results["variants"]["latent_cost"])
        for batch, entry in results["variants"]["batches"].items():
            entry["bound_s"] = bound = cost.bound_seconds(bounds, int(batch))
            for result in entry["variants"].values():
                if "step_s" in result:
                    result["fraction_of_bound"] = bound / result["step_s"]


def eager_section(pipe, width: int, batches, latent_steps: int, composite_steps: int, threads: int, say) -> list[dict]:
    """PyTorch eager against the runtime on the ImageNet-scale networks: same weights, method and thread count.

    Both run on `threads` threads and on one (a loaded machine can favour one thread), taking turns;
    the composite path only at the smallest batch (its ratio is what matters, and it is slow).
    """
    from bench.eager import eager_step_seconds
    from bench.imagenet import build_nets
    from bench.steps import batch_weights, step_seconds
    from export_tools.export import ClassifierOnGenerator, ClassLogp
    from latent_onnx import Pipeline

    nets = build_nets(width)
    modules = {
        "latent": ClassLogp(nets.head),
        "composite": ClassLogp(ClassifierOnGenerator(nets.generator, nets.classifier)),
    }
    config = pipe.sampler_config(condition="class")
    classes = _first_class(pipe)
    rows = []
    for count in sorted({threads, 1}, reverse=True):
        counted = Pipeline.from_bundle(pipe.bundle, device="cpu", threads=count)  # eager runs on the CPU too
        for batch in batches:
            for path, module in modules.items():
                if path == "composite" and batch != batches[0]:
                    continue
                steps = latent_steps if path == "latent" else composite_steps
                rng = np.random.default_rng(0)
                z0 = rng.standard_normal((batch, pipe.bundle.latent_dim), dtype=np.float32)
                if config.clip is not None:
                    z0 = np.clip(z0, *config.clip)
                weights = batch_weights(pipe, classes, batch)
                ours = eager = float("inf")
                for _ in range(2):  # taking turns, so that a change in load falls on both
                    ours = min(ours, statistics.median(step_seconds(counted, classes, path, batch, steps)))
                    eager = min(eager, eager_step_seconds(module, weights, z0, config, steps, count))
                say(
                    f"  {path} batch {batch}, {count} thread(s): eager {eager * 1e3:.2f} ms/step, runtime {ours * 1e3:.2f}"
                )
                rows.append(
                    {
                        "path": path,
                        "batch": batch,
                        "threads": count,
                        "eager_step_s": eager,
                        "runtime_step_s": ours,
                        "speedup": eager / ours,
                    }
                )
    return rows


def step_problem(pipe, batch: int):
    """The bundle's latent sampling problem at `batch` chains (bench.variants.StepProblem), eps1 held constant."""
    from bench.steps import batch_weights, start_codes
    from bench.variants import StepProblem

    model = onnx.load_from_string(pipe.bundle.graph_bytes("class_grad"))
    config = dataclasses.replace(pipe.sampler_config(condition="class"), eps1_final=None)
    prior_std = getattr(pipe.bundle.prior, "std", 1.0)
    classes = _first_class(pipe)
    return StepProblem(model, config, prior_std, start_codes(pipe, batch), batch_weights(pipe, classes, batch))


def _say_variants(say, batch: int, results: dict, prefix: str = "") -> None:
    for name, result in results.items():
        outcome = f"{result['step_s'] * 1e3:.3f} ms/step" if "step_s" in result else f"cannot run ({result['error']})"
        say(f"  {prefix}variant {name} batch {batch}: {outcome}")


def variants_section(pipe, batches, steps: int, threads, say) -> dict:
    """The latent step's variants at each batch (seconds per step, or why a variant cannot run)."""
    from bench.variants import quality, time_variants

    model = onnx.load_from_string(pipe.bundle.graph_bytes("class_grad"))
    out = {"latent_cost": dataclasses.asdict(graph_cost(model)), "batches": {}, "quality": None}
    for batch in batches:
        problem = step_problem(pipe, batch)
        results = time_variants(problem, max(1, steps // 2), threads)
        _say_variants(say, batch, results)
        out["batches"][str(batch)] = {"variants": results}
        if out["quality"] is None:
            out["quality"] = quality(problem, steps, threads)
    return out


def cuda_section(pipes: dict, batches, steps: int, say) -> dict:
    """Per bundle (name -> Pipeline) and batch, the CUDA step variants of bench.cuda (seconds per step)."""
    from bench.cuda import missing_cuda, time_cuda_variants, time_product_capture

    problem = missing_cuda()
    if problem:
        return {"skipped": problem}
    out = {}
    for name, pipe in pipes.items():
        out[name] = {}
        for batch in batches:
            results = time_cuda_variants(step_problem(pipe, batch), steps)
            _say_variants(say, batch, results, f"{name} cuda ")
            out[name][str(batch)] = results
        product = time_product_capture(pipe.bundle, _first_class(pipe), batches, steps, pipe.factory.threads)
        for batch, row in product.items():
            say(
                f"  {name} cuda product batch {batch}: {row['uncaptured']['step_s'] * 1e3:.3f} ms/step uncaptured,"
                f" {row['captured']['step_s'] * 1e3:.3f} captured (graphs {row['graph_ids']}),"
                f" images differ by at most {row['max_pixel_difference']}"
            )
        out[name]["product"] = product
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--sections", default=",".join(SECTIONS), show_default=True, help="Comma-separated sections to run.")
@click.option("--batches", default="1,8,64", show_default=True, help="Batch sizes (comma-separated).")
@click.option("--latent-steps", type=int, default=20, show_default=True, help="Latent steps timed per measurement.")
@click.option(
    "--composite-steps", type=int, default=2, show_default=True, help="Composite steps timed at ImageNet scale."
)
@click.option(
    "--threads",
    type=click.IntRange(1, 1024),
    default=None,
    help="Threads for ONNX Runtime and torch (default: all cores).",
)
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda", "auto"]),
    default="cpu",
    show_default=True,
    help="Device of the latent/composite sections (eager, variants, precision and cold start stay on the CPU).",
)
@click.option(
    "--width",
    type=click.Choice(["1", "2", "4", "8", "16"]),
    default="1",
    show_default=True,
    callback=lambda context, parameter, value: int(value),
    help="ImageNet network width divisor (1: real shapes; 16: tests).",
)
@click.option(
    "--default-bundle",
    type=click.Path(path_type=Path),
    default=DEFAULT_BUNDLE,
    show_default=True,
    help="Bundle of the 'default' and 'coldstart' sections.",
)
@click.option(
    "--evaluator",
    type=click.Path(dir_okay=False, path_type=Path),
    default=REPO / "runs" / "evaluator.pt",
    show_default=True,
    help="Fashion evaluator checkpoint for the 'precision' section.",
)
@click.option(
    "--cache",
    type=click.Path(file_okay=False, path_type=Path),
    default=REPO / "bench" / ".cache",
    show_default=True,
    help="Where the ImageNet-scale graphs are exported once.",
)
@click.option(
    "--dataset-per-class",
    type=click.IntRange(1, 10_000),
    default=60,
    show_default=True,
    help="Images per class in each run of the 'dataset' section.",
)
@click.option(
    "--re-export", is_flag=True, help="Export the ImageNet-scale bundle again (after the networks or exporter changed)."
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=REPO / "bench" / "results",
    show_default=True,
)
def main(
    sections,
    batches,
    latent_steps,
    composite_steps,
    threads,
    device,
    width,
    default_bundle,
    evaluator,
    cache,
    dataset_per_class,
    re_export,
    out_dir,
):
    """Benchmark latent against composite sampling, the runtime against PyTorch eager and against the machine."""
    from latent_onnx import LatentOnnxError

    try:
        run(
            sections,
            batches,
            latent_steps,
            composite_steps,
            threads,
            device,
            width,
            default_bundle,
            evaluator,
            cache,
            dataset_per_class,
            re_export,
            out_dir,
        )
    except (LatentOnnxError, RuntimeError) as error:  # export, bundle, device and cold-start failures: one line
        raise click.ClickException(" ".join(str(error).split())) from None


def run(
    sections,
    batches,
    latent_steps,
    composite_steps,
    threads,
    device,
    width,
    default_bundle,
    evaluator,
    cache,
    dataset_per_class,
    re_export,
    out_dir,
):
    """The benchmark run behind `main` (same arguments)."""
    from export_tools import require_torch
    from latent_onnx import Pipeline

    chosen = [s.strip() for s in sections.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        raise click.BadParameter(
            f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}", param_hint="--sections"
        )
    try:
        batch_sizes = [int(b) for b in batches.split(",")]
    except ValueError:
        raise click.BadParameter(
            f"'{batches}' is not a comma-separated list of integers", param_hint="--batches"
        ) from None
    if not batch_sizes or min(batch_sizes) < 1 or min(latent_steps, composite_steps) < 1:
        raise click.BadParameter("batch sizes and step counts must be >= 1")
    if {"imagenet", "eager", "variants", "cuda", "precision"} & set(chosen):
        require_torch()  # the ImageNet-scale networks, PyTorch eager and the evaluator need the export extra

    def say(line: str) -> None:
        click.echo(line, err=True)

    results = {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": _machine(),
            "load_before": _load(),
            "python": platform.python_version(),
            "onnxruntime": __import__("onnxruntime").__version__,
            "numpy": np.__version__,
            "threads": threads,
            "command": " ".join(["python -m bench", *sys.argv[1:]]),
            "sections": chosen,
            "batches": batch_sizes,
            "latent_steps": latent_steps,
            "composite_steps": composite_steps,
            "width": width,
            "device": device,
        }
    }
    threads = results["meta"]["threads"] = threads or os.cpu_count() or 1
    imagenet_pipe = None
    if {"imagenet", "eager", "variants", "cuda"} & set(chosen):
        from bench.imagenet import ensure_bundle

        bundle = ensure_bundle(cache, width, say, refresh=re_export)
        imagenet_pipe = Pipeline.from_bundle(bundle, device=device, threads=threads)
    default_pipe = None
    if {"default", "cuda", "coldstart", "precision", "serve"} & set(chosen) and (
        Path(default_bundle) / "manifest.json"
    ).is_file():
        default_pipe = Pipeline.from_bundle(default_bundle, device=device, threads=threads)
    measured = imagenet_pipe or default_pipe  # the bound is measured over the weights of its latent step
    working_set = (
        graph_cost(onnx.load_from_string(measured.bundle.graph_bytes("class_grad"))).weight_bytes
        if measured is not None
        else 512 << 20
    )
    say("measuring the machine ...")
    bounds = measure_machine(threads, working_set)
    say(
        f"  {bounds.read_bandwidth_gbs:.1f} GB/s read ({bounds.buffer_mb:.0f} MB buffer), {bounds.matmul_gflops:.0f} GFLOP/s GEMM"
    )
    if "imagenet" in chosen:
        say("ImageNet scale: latent vs composite ...")
        results["imagenet"] = time_bundle(imagenet_pipe, batch_sizes, latent_steps, composite_steps, say, cache)
    if "cuda" in chosen:
        say("CUDA: the runtime's loop against device-resident loops ...")
        pipes = {"imagenet": imagenet_pipe} | ({"default": default_pipe} if default_pipe is not None else {})
        results["cuda"] = cuda_section(pipes, batch_sizes, latent_steps, say)
    if "default" in chosen:
        if default_pipe is not None:
            say(f"default bundle {default_bundle}: latent vs composite ...")
            results["default"] = time_bundle(default_pipe, batch_sizes, latent_steps * 5, latent_steps, say, cache)
        else:
            results["default"] = {"skipped": f"no bundle at {default_bundle}"}
    if "eager" in chosen:
        say("PyTorch eager vs runtime ...")
        results["eager"] = eager_section(imagenet_pipe, width, batch_sizes, latent_steps, composite_steps, threads, say)
    if "variants" in chosen:
        say("latent step variants ...")
        variant_batches = sorted({batch_sizes[0], batch_sizes[-1]})
        results["variants"] = variants_section(imagenet_pipe, variant_batches, latent_steps, threads, say)
    if "precision" in chosen:
        from bench.precision import int8_sample_quality
        from export_tools.quantize import int8_dynamic_model

        missing = [str(p) for p in (Path(default_bundle) / "manifest.json", evaluator) if not Path(p).is_file()]
        if missing:
            results["precision"] = {"skipped": f"missing {', '.join(missing)}"}
        else:
            say("int8 sample quality on the default bundle ...")
            results["precision"] = int8_sample_quality(default_bundle, evaluator, int8_dynamic_model, 20, threads)
            say(f"  {results['precision']}")
    if "coldstart" in chosen:
        from bench.coldstart import cold_start

        if default_pipe is not None:
            say("cold start ...")
            runs = [
                cold_start(default_bundle, "0", default_pipe.sampler_config(condition="class").steps, threads, REPO)
                for _ in range(3)
            ]
            best = min(runs, key=lambda run: run.first_image_s)
            say(f"  first image after {best.first_image_s:.2f} s, peak RSS {best.peak_rss_mb:.0f} MiB")
            results["coldstart"] = {**best.to_dict(), "runs": [run.to_dict() for run in runs]}
        else:
            results["coldstart"] = {"skipped": f"no bundle at {default_bundle}"}
    if "dataset" in chosen:
        from bench.dataset import dataset_section

        if (Path(default_bundle) / "manifest.json").is_file():
            say("dataset writing: local 1 and 2 workers, Ray 2 actors ...")
            results["dataset"] = dataset_section(Path(default_bundle), say, per_class=dataset_per_class)
        else:
            results["dataset"] = {"skipped": f"no bundle at {default_bundle}"}
    if "serve" in chosen:
        from bench.serve import serve_section

        say("serve: HTTP against the Python API ...")
        results["serve"] = (
            serve_section(default_bundle, say)
            if default_pipe is not None
            else {"skipped": f"no bundle at {default_bundle}"}
        )
    say("measuring the machine again (the bound is the best of both) ...")
    bounds = best_bounds(bounds, measure_machine(threads, working_set))
    results["machine"] = dataclasses.asdict(bounds)
    apply_bounds(results, bounds)
    results["meta"]["load_after"] = _load()
    files = write_results(results, out_dir)
    for file in files:
        say(f"wrote {file}")
    if not any(file.suffix == ".png" for file in files):
        say("no results.png: nothing to plot, or matplotlib is missing (pip install matplotlib)")


if __name__ == "__main__":
    main()
