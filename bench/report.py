"""Write a benchmark run as results.json, results.md (tables) and results.png (plots).

Every file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _pct(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction:.0%}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]


def _bundle_tables(title: str, section: dict) -> list[str]:
    if "skipped" in section:
        return [f"### {title}", "", f"Skipped: {section['skipped']}.", ""]
    lines = [
        f"### {title}: `{section['bundle']}` (D = {section['latent_dim']}, {section['default_steps']} steps per image, "
        f"{section['provider']}; int8 on the CPU)",
        "",
    ]
    by = {(t["path"], t["batch"]): t for t in section["timings"]}
    batches = sorted({t["batch"] for t in section["timings"]})
    ratios = {r["batch"]: r for r in section["ratios"]}
    rows = []
    for batch in batches:
        latent, quantised, composite = by[("latent", batch)], by[("latent-int8", batch)], by.get(("composite", batch))
        ratio = ratios.get(batch)
        rows.append(
            [
                str(batch),
                _ms(latent["step_s"]),
                _ms(quantised["step_s"]),
                _ms(composite["step_s"]) if composite else "-",
                f"**{ratio['step_ratio']:.0f}x** / {ratio['step_ratio_int8']:.0f}x" if ratio else "-",
                _ms(latent["image_s"]),
                _ms(quantised["image_s"]),
                _ms(composite["image_s"]) if composite else "-",
                f"**{ratio['image_ratio']:.0f}x** / {ratio['image_ratio_int8']:.0f}x" if ratio else "-",
            ]
        )
    lines += _table(
        [
            "batch",
            "latent ms/step",
            "latent int8 ms/step",
            "composite ms/step",
            "step ratio (float32 / int8)",
            "latent ms/image",
            "latent int8 ms/image",
            "composite ms/image",
            "image ratio (float32 / int8)",
        ],
        rows,
    )
    rows = []
    for batch in batches:
        for label in ("latent", "latent-int8"):
            t = by[(label, batch)]
            if "bound_s" in t:
                rows.append(
                    [
                        str(batch),
                        label,
                        _ms(t["step_s"]),
                        _ms(t["graph_s"]),
                        _ms(t["bound_s"]),
                        _pct(t["step_fraction_of_bound"]),
                        _pct(t["graph_fraction_of_bound"]),
                    ]
                )
    if rows:
        cost = section["latent_cost"]
        lines += [
            f"Latent step against the machine (class_grad reads {cost['weight_bytes'] / 1e6:.1f} MB of weights and does "
            f"{cost['flops_per_sample'] / 1e6:.1f} MFLOP per sample per step):",
            "",
        ]
        lines += _table(
            ["batch", "path", "step ms", "graph only ms", "bound ms (float32)", "step % of bound", "graph % of bound"],
            rows,
        )
    rows = [
        [str(batch), *(f"{batch / by[(label, batch)]['generate_s']:.0f}" for label in ("latent", "latent-int8"))]
        for batch in batches
        if by[("latent", batch)].get("generate_s")
    ]
    if rows:
        lines += [
            f"`Pipeline.generate` end to end ({section['default_steps']} steps and the decode, as users call it):",
            "",
        ]
        lines += _table(["batch", "latent images/s", "latent int8 images/s"], rows)
    return lines


def _cuda_tables(section: dict) -> list[str]:
    """The CUDA section: per bundle, ms per step of each variant at each batch (bench/cuda.py)."""
    lines = ["## The latent step on CUDA: the runtime's loop against loops that keep z on the device", ""]
    if "skipped" in section:
        return lines + [f"Skipped: {section['skipped']}.", ""]
    for bundle, by_batch in section.items():
        batches = list(by_batch)
        names = list(by_batch[batches[0]])
        rows = [
            [name] + [_ms(by_batch[b][name]["step_s"]) if "step_s" in by_batch[b][name] else "n/a" for b in batches]
            for name in names
        ]
        lines += [f"{bundle}:", ""] + _table(["variant"] + [f"batch {b} ms/step" for b in batches], rows)
        errors = [f"- {n}: {by_batch[batches[0]][n]['error']}" for n in names if "error" in by_batch[batches[0]][n]]
        lines += ["Variants that cannot run here:", *errors, ""] if errors else []
    return lines


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [
        "# Benchmark results",
        "",
        f"{meta['date']} on {meta['machine']}; load average {meta['load_before']} before, {meta.get('load_after')} after; "
        f"onnxruntime {meta['onnxruntime']}, {meta['threads']} threads. Command: `{meta['command']}`.",
        "",
    ]
    if "machine" in results:
        m = results["machine"]
        lines += [
            f"Machine bound ({m['threads']} threads, best of a measurement at the start and one at the end): "
            f"read bandwidth **{m['read_bandwidth_gbs']:.1f} GB/s** (a {m['buffer_mb']:.1f} MB buffer, the size of the "
            f"first bundle's latent-step weights, read again and again), float32 GEMM **{m['matmul_gflops']:.0f} GFLOP/s**.",
            "",
        ]
    lines += ["## Latent path against composite path", ""]
    if "imagenet" in results:
        lines += _bundle_tables("ImageNet scale (DeePSiM fc6 + CaffeNet, random weights)", results["imagenet"])
    if "default" in results:
        lines += _bundle_tables("Shipped default bundle", results["default"])
    if "eager" in results:
        lines += ["## Runtime against PyTorch eager (same method, same weights, ImageNet scale)", ""]
        rows = [
            [
                r["path"],
                str(r["batch"]),
                str(r["threads"]),
                _ms(r["eager_step_s"]),
                _ms(r["runtime_step_s"]),
                f"**{r['speedup']:.2f}x**",
            ]
            for r in results["eager"]
        ]
        lines += _table(
            ["path", "batch", "threads", "PyTorch eager ms/step", "runtime ms/step", "runtime speed-up"], rows
        )
    if "cuda" in results:
        lines += _cuda_tables(results["cuda"])
    if "variants" in results:
        v = results["variants"]
        batches = list(v["batches"])
        names = list(v["batches"][batches[0]]["variants"])
        lines += ["## Making the latent step fast (ImageNet-scale class_grad)", ""]
        rows = []
        for name in names:
            row = [name]
            for batch in batches:
                result = v["batches"][batch]["variants"][name]
                row += (
                    [_ms(result["step_s"]), _pct(result["fraction_of_bound"])] if "step_s" in result else ["n/a", "-"]
                )
            rows.append(row)
        header = ["variant"] + [h for b in batches for h in (f"batch {b} ms/step", f"batch {b} % of bound")]
        bounds = ", ".join(f"batch {b}: {_ms(v['batches'][b]['bound_s'])} ms" for b in batches)
        lines += _table(header, rows) + [f"Bound per step: {bounds}.", ""]
        errors = [
            f"- {name}: {v['batches'][b]['variants'][name]['error']}"
            for name in names
            for b in batches[:1]
            if "error" in v["batches"][b]["variants"][name]
        ]
        lines += ["Variants that cannot run here:", *errors, ""] if errors else []
        if v.get("quality"):
            lines += ["int8 weights against float32 (same start, same noise):", ""]
            rows = [
                [
                    label,
                    f"{q['grad_cosine_min']:.5f}",
                    f"{q['grad_relative_error']:.2%}",
                    f"{q['logp_abs_diff_max']:.2g}",
                    f"{q['chain_z_diff_over_path']:.2%}",
                    f"{q['chain_final_logp_fp32']:.3g} / {q['chain_final_logp_int8']:.3g}",
                ]
                for label, q in v["quality"].items()
            ]
            steps = next(iter(v["quality"].values()))["chain_steps"]
            lines += _table(
                [
                    "scheme",
                    "min gradient cosine",
                    "gradient relative error",
                    "max abs logp difference",
                    f"chain difference after {steps} steps / distance travelled",
                    "final logp float32 / int8",
                ],
                rows,
            )
    if "precision" in results:
        p = results["precision"]
        lines += ["## int8 weights on the default bundle, judged by the independent evaluator", ""]
        if "skipped" in p:
            lines += [f"Skipped: {p['skipped']}.", ""]
        else:
            lines += _table(
                [
                    "samples",
                    "class agreement float32",
                    "class agreement int8",
                    "same judged class",
                    "mean abs pixel difference (0-255)",
                ],
                [
                    [
                        str(p["samples"]),
                        f"{p['class_agreement_float32']:.3f}",
                        f"{p['class_agreement_int8']:.3f}",
                        f"{p['same_judged_class']:.3f}",
                        f"{p['mean_abs_pixel_difference']:.2f}",
                    ]
                ],
            )
    if "coldstart" in results:
        c = results["coldstart"]
        lines += ["## Cold start of `latent-onnx generate -n 1`", ""]
        if "skipped" in c:
            lines += [f"Skipped: {c['skipped']}.", ""]
        else:
            lines += _table(
                ["bundle", "steps", "start to first image s", "start to exit s", "peak RSS MiB"],
                [
                    [
                        Path(c["bundle"]).name,
                        str(c["steps"]),
                        f"{c['first_image_s']:.2f}",
                        f"{c['exit_s']:.2f}",
                        f"{c['peak_rss_mb']:.0f}",
                    ]
                ],
            ) + [f"Best of {len(c['runs'])} runs.", ""]
    if "dataset" in results:
        from bench.dataset import markdown_lines

        lines += markdown_lines(results["dataset"])
    if "serve" in results:
        from bench.serve import markdown_lines as serve_lines

        lines += serve_lines(results["serve"])
    return "\n".join(lines)


def plot(results: dict, png: Path) -> bool:
    """Bar charts: ms per step by path and batch (log scale), and % of bound by variant.

    False (nothing written) without data to plot or without matplotlib (the `bench` extra).
    """
    try:
        import matplotlib
    except ImportError:
        return False

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    panels = [key for key in ("imagenet", "default") if key in results and "timings" in results[key]]
    has_variants = "variants" in results
    if not panels and not has_variants:
        return False
    figure, axes = plt.subplots(
        1, len(panels) + has_variants, figsize=(5.5 * (len(panels) + has_variants), 4), squeeze=False
    )
    for axis, key in zip(axes[0], panels):
        timings = results[key]["timings"]
        batches = sorted({t["batch"] for t in timings})
        paths = sorted({t["path"] for t in timings}, key=["latent", "latent-int8", "composite"].index)
        width = 0.8 / len(paths)
        for i, path in enumerate(paths):
            values = [
                next((t["step_s"] * 1e3 for t in timings if t["path"] == path and t["batch"] == b), 0) for b in batches
            ]
            axis.bar([x + i * width for x in range(len(batches))], values, width, label=path)
        axis.set_xticks(
            [x + width * (len(paths) - 1) / 2 for x in range(len(batches))], [f"batch {b}" for b in batches]
        )
        axis.set_yscale("log")
        axis.set_ylabel("ms per SGLD step")
        axis.set_title(f"{results[key]['bundle']}")
        axis.legend()
    if has_variants:
        axis = axes[0][-1]
        v = results["variants"]["batches"]
        batches = list(v)
        names = [n for n in v[batches[0]]["variants"] if all("step_s" in v[b]["variants"][n] for b in batches)]
        width = 0.8 / len(batches)
        for i, batch in enumerate(batches):
            axis.barh(
                [y + i * width for y in range(len(names))],
                [100 * v[batch]["variants"][n]["fraction_of_bound"] for n in names],
                width,
                label=f"batch {batch}",
            )
        axis.set_yticks([y + width * (len(batches) - 1) / 2 for y in range(len(names))], names)
        axis.axvline(80, color="grey", linestyle="--", linewidth=1)
        axis.set_xlabel("% of the machine's bound (latent step)")
        axis.legend()
    figure.tight_layout()
    figure.savefig(png, dpi=110, format="png")
    plt.close(figure)
    return True


def _replace(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_results(results: dict, out_dir: Path) -> list[Path]:
    """Write results.json, results.md and (when there is something to plot) results.png; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    json_path, md_path, png_path = out_dir / "results.json", out_dir / "results.md", out_dir / "results.png"
    _replace(json_path, lambda tmp: tmp.write_text(json.dumps(results, indent=1) + "\n"))
    _replace(md_path, lambda tmp: tmp.write_text(markdown(results)))
    written += [json_path, md_path]
    tmp_png = png_path.with_name(".results.tmp.png")
    if plot(results, tmp_png):
        os.replace(tmp_png, png_path)
        written.append(png_path)
    return written
