"""The run's report: what pruning cost, measured on the exported model, as JSON and as a table."""

from __future__ import annotations

import json
from pathlib import Path
import torch

from ..pruning.evaluation import evaluate, random_state
from .pruned_model import EXPORT_FILE, count_parameters, load_exported, save_exported
from .latency import compare_latency, describe_speedup, median_and_iqr, time_interleaved
from .latency_model import LatencyGoal, check_against_target
from .onnx_model import ONNX_FILE, OnnxRunner, save_onnx
from ..config import Config
from ..pruning.space import PruningSpace

REPORT_FILE = "report.json"
RANDOM_PRUNE_FRACTIONS = (0.25, 0.5, 0.75)


def build_report(space: PruningSpace, final_mask: torch.Tensor, config: Config, test_loader, device: torch.device,
                 output: Path, *, dense: dict | None, converged_at_step: int | None, edropout_seconds: float,
                 latency_goal: LatencyGoal | None = None) -> dict:
    """Measured on `test_loader` (batches of (images, labels)) on `device`; exports written into `output`."""
    test = test_loader
    final = evaluate(space, final_mask, test, device)

    example = space.example_inputs
    pruned_model = space.export(final_mask).eval()
    exports = _write_exports(space, final_mask, pruned_model, config.export_formats, test, device, output)
    params_total, params_kept = count_parameters(space.model), count_parameters(pruned_model)
    # counted on the pruning space (pruning/macs.py), as a MACs target is: the same figure the run was held to
    macs_total = space.kept_macs(torch.ones(space.num_units, dtype=torch.bool))
    macs_kept = space.kept_macs(final_mask)

    report = {
        "top1": final["top1"], "top3": final["top3"], "top5": final["top5"], "test_loss": final["loss"],
        "units_total": space.num_units, "units_kept": int(final_mask.sum()),
        "params_total": params_total, "params_kept": params_kept,
        "params_kept_fraction": params_kept / params_total,
        "macs_total": macs_total, "macs_kept": macs_kept, "macs_kept_fraction": macs_kept / macs_total,
        "converged_at_step": converged_at_step,
        "edropout_seconds": edropout_seconds,
        "model": config.model, "dataset": config.dataset, "method": config.method,
    } | exports
    if config.report_extra_masks:
        report |= _extra_masks(space, config, test, device)
    batches = list(dict.fromkeys(config.latency_batches + ([latency_goal.model.key["batch"]] if latency_goal else [])))
    if batches:  # measured, not assumed: fewer MACs need not mean less time
        report["latency"] = compare_latency(space.model, pruned_model, example, batches,
                                            config.latency_repeats) | {"macs_reduction": macs_total / macs_kept}
    if latency_goal is not None:
        row = report["latency"][f"batch_{latency_goal.model.key['batch']}"]
        report["latency_target"] = check_against_target(row, latency_goal.target,
                                                        latency_goal.model.latency_at(macs_kept / macs_total))
    if dense is not None:
        report |= {"dense_top1": dense["test"]["top1"], "dense_top3": dense["test"]["top3"],
                   "dense_top5": dense["test"]["top5"], "dense_test_loss": dense["test"]["loss"],
                   "top1_drop": dense["test"]["top1"] - final["top1"],
                   "top5_drop": dense["test"]["top5"] - final["top5"]}
    return report


def _extra_masks(space: PruningSpace, config: Config, test_loader, device: torch.device) -> dict:
    """The trained weights with every unit kept and under random masks (the references the paper
    reports beside its result): four more passes over the test set."""
    generator = torch.Generator().manual_seed(config.seed + 1)
    return {"all_units_kept": evaluate(space, torch.ones(space.num_units, dtype=torch.bool), test_loader, device),
            "random_masks": {f"{int(f * 100)}": evaluate(space, random_state(space, f, generator), test_loader, device)
                             for f in RANDOM_PRUNE_FRACTIONS}}


@torch.no_grad()
def _write_exports(space: PruningSpace, state: torch.Tensor, pruned_model: torch.nn.Module, formats: list[str],
                   test_loader, device: torch.device, output: Path) -> dict:
    """Save every format of `export_formats`; each is loaded as a user would and compared with the masked
    model on a test batch (largest output difference), and all are timed in turn on its first 32 samples
    (`export_latency_ms`: medians; `export_latency_iqr_ms`: their interquartile ranges)."""
    x, _ = next(iter(test_loader))
    x = x.to(device)
    space.model.eval()
    masked = space.masked_forward(state, x)
    few = x[:32]
    runners = {"pytorch": pruned_model}
    found: dict = {}
    if "pt2" in formats:
        runners["pt2"] = load_exported(save_exported(pruned_model, space.example_inputs, output))
        found |= {"exported_model": EXPORT_FILE,
                  "export_max_abs_diff": float((runners["pt2"](x) - masked).abs().max())}
    if "onnx" in formats:
        runners["onnx"] = OnnxRunner(save_onnx(pruned_model, space.example_inputs, output))
        found |= {"exported_onnx": ONNX_FILE,
                  "onnx_max_abs_diff": float((runners["onnx"](x) - masked.cpu()).abs().max())}
    timed = time_interleaved({kind: (lambda run=run: run(few)) for kind, run in runners.items()}, device,
                             repeats=10, budget_s=10.0)
    spreads = {kind: median_and_iqr(samples) for kind, samples in timed["samples_ms"].items()}
    found["export_latency_ms"] = {"batch": len(few)} | {kind: median for kind, (median, _) in spreads.items()}
    found["export_latency_iqr_ms"] = {kind: iqr for kind, (_, iqr) in spreads.items()} | \
        {"repeats": timed["repeats"], "threads": timed["threads"]}
    return found


def write_report(report: dict, output: Path) -> Path:
    path = Path(output) / REPORT_FILE
    path.write_text(json.dumps(report, indent=2))
    return path


def format_table(report: dict) -> str:
    """The report as a plain-text table, one row per network evaluated on the test set."""
    names = {"edropout": "EDropout", "dropnet": "DropNet", "l1": "L1-norm"}
    method = names.get(report["method"], report["method"])
    rows = [(f"{method}, final mask", report["top1"], report["top5"], report["test_loss"],
             f"{report['params_kept']:,} ({report['params_kept_fraction']:.1%})")]
    if "all_units_kept" in report:
        kept = report["all_units_kept"]
        rows.append(("same weights, all units kept", kept["top1"], kept["top5"], kept["loss"],
                     f"{report['params_total']:,} (100.0%)"))
    for fraction, metrics in report.get("random_masks", {}).items():
        rows.append((f"random mask, {fraction}% units pruned", metrics["top1"], metrics["top5"], metrics["loss"], ""))
    if "dense_top1" in report:
        rows.append(("dense baseline (no pruning)", report["dense_top1"], report["dense_top5"],
                     report["dense_test_loss"], f"{report['params_total']:,} (100.0%)"))
    header = f"{'network':<34} {'top-1':>7} {'top-5':>7} {'loss':>7}  parameters"
    lines = [header, "-" * len(header)]
    lines += [f"{name:<34} {t1:>6.2f}% {t5:>6.2f}% {loss:>7.3f}  {params}" for name, t1, t5, loss, params in rows]
    lines.append("")
    lines.append(f"units kept {report['units_kept']}/{report['units_total']}; MACs kept {report['macs_kept']:,} of "
                 f"{report['macs_total']:,} ({report['macs_kept_fraction']:.1%})")
    if "top1_drop" in report:
        lines.append(f"top-1 drop against the dense baseline: {report['top1_drop']:+.2f} points "
                     f"(top-5: {report['top5_drop']:+.2f})")
    lines += _latency_lines(report.get("latency", {}))
    if "latency_target" in report:
        lines.append(describe_latency_target(report["latency_target"]))
    latency = report.get("export_latency_ms", {})
    for file_key, diff_key, kind in (("exported_model", "export_max_abs_diff", "pt2"),
                                     ("exported_onnx", "onnx_max_abs_diff", "onnx")):
        if file_key in report:
            timing = f", {latency[kind]:.1f} ms per batch of {latency['batch']}" if kind in latency else ""
            lines.append(f"exported model: {report[file_key]} (max |output difference| vs masked: "
                         f"{report[diff_key]:.2e}{timing})")
    return "\n".join(lines)


def describe_latency_target(goal: dict) -> str:
    """The console's line on a latency target: met within the measurement's spread, or missed by how much."""
    low, high = goal["measured_interval"]
    measured = (f"measured {goal['measured_fraction']:.2f} of the dense time ({low:.2f}-{high:.2f} over paired "
                f"repeats; the latency model predicted {goal['predicted_fraction']:.2f})")
    if goal["missed"]:
        return (f"MISSED the latency target {goal['target']:.2f} at batch {goal['batch']}: {measured}, "
                f"{goal['over_by']:+.0%} off, more than the measurement's spread")
    return f"latency target {goal['target']:.2f} at batch {goal['batch']} met within the measurement's spread: {measured}"


def _latency_lines(latency: dict) -> list[str]:
    """One line per timed batch: medians, their interquartile ranges, and the speed-up only if measurable."""
    lines = []
    for key in sorted((k for k in latency if k.startswith("batch_")), key=lambda k: int(k[6:])):
        row = latency[key]
        dense, pruned = (f"{row[f'{name}_ms']:.2f} ms (IQR {low:.2f}-{high:.2f})"
                         for name in ("dense", "pruned") for low, high in [row[f"{name}_ms_iqr"]])
        lines.append(f"latency at batch {row['batch']} on {latency['device']} ({row['threads']} threads, "
                     f"{row['repeats']} repeats): dense {dense}, pruned {pruned}; {describe_speedup(row)}; "
                     f"MACs {latency['macs_reduction']:.2f}x fewer")
    return lines
