"""Quantise the shipped ``egg_sexing`` model to int8, measure it, and decide if it serves.

``python -m inferstream.apps.eggs.quantize`` (needs ``onnx``: ``pip install
'inferstream[train]'``) reads ``models/egg_sexing.onnx`` and writes
``models/egg_sexing_int8.onnx`` and its ``.json`` beside it, then rewrites
``docs/model-card.md``:

1. the graph's input is padded from one channel to four with zeros, and the first
   convolution's weights with it: the same function, but ONNX Runtime's int8
   convolution takes its fast path only when the input channels are a multiple of 4
   (measured: the first convolution took 57 % of int8 inference at one channel);
2. ``onnxruntime.quantization.quantize_static``: QDQ format, int8 weights per output
   channel, uint8 activations (int8 activations ran up to 7 times slower than fp32 on
   this CPU), ranges calibrated (min-max) on generated, preprocessed scans from a seed
   that training and evaluation never use; then the padding moves after the input's
   quantisation (:func:`pad_quantized_input`);
3. both models score the same held-out scans; the int8 model is served by default
   (``"serve_by_default": true``, :mod:`inferstream.shipped`) if and only if its
   accuracy is at most 0.3 points below the fp32 model's;
4. their inference throughput is measured, interleaved, on one thread.

``--remeasure`` keeps both models and only measures their throughput again on this
machine (the ratio depends on the CPU: VNNI or not), rewriting the ``.json``'s
``throughput`` and the card.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

try:  # onnxruntime's quantisation tools are written on onnx
    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime import quantization as q
except ImportError as exc:
    raise ImportError(f"quantising needs onnx ({exc}): pip install 'inferstream[train]'") from exc

from inferstream.apps.eggs import APP
from inferstream.apps.eggs.int8_card import INT8_MODEL, Comparison, compare_models
from inferstream.apps.eggs.model_card import CARD_SCANS, CARD_SEED, evaluate, write_card
from inferstream.apps.eggs.phantom import generate
from inferstream.apps.eggs.preprocess import preprocess_batch
from inferstream.classify import Model, load_model, model_from_bytes
from inferstream.errors import ConfigError
from inferstream.shipped import SERVE_BY_DEFAULT

F32 = NDArray[np.float32]

FP32_MODEL = "egg_sexing"
#: Served only if int8 accuracy >= fp32 accuracy - this many points (percent).
TOLERANCE_POINTS = 0.3
#: Batch sizes the throughput is measured at: one scan, a small and a full micro-batch.
BATCHES = (1, 16, 64)
#: Rounds of the throughput measurement, taking turns between the models.
ROUNDS = 15


@dataclass(frozen=True)
class QuantizeConfig:
    # Seeds no other scans come from: training uses 100-104, the card 1001-1005.
    calibration_seed: int = 3001
    calibration_scans: int = 1024
    # The training difficulties, so the ranges cover the scans the model learnt.
    calibration_difficulties: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)
    held_out_seed: int = 2001
    held_out_scans: int = 12000
    input_channels: int = 4
    per_channel: bool = True


def calibration_scans(cfg: QuantizeConfig) -> F32:
    """Preprocessed scans for the activation ranges, the difficulties in equal shares."""
    per = -(-cfg.calibration_scans // len(cfg.calibration_difficulties))
    batches = [
        preprocess_batch(scans)
        for k, difficulty in enumerate(cfg.calibration_difficulties)
        for _, scans in generate(per, seed=cfg.calibration_seed + k, difficulty=difficulty)
    ]
    return np.concatenate(batches)[: cfg.calibration_scans]


def widen_input(graph: Any, channels: int) -> Any:
    """The graph with its one-channel input padded to ``channels`` with zeros before the
    first convolution, whose new weights are zeros: the same function, exactly."""
    conv = graph.graph.node[0]
    scan = graph.graph.input[0].name
    if conv.op_type != "Conv" or conv.input[0] != scan:
        raise ConfigError("expected the graph to open with a convolution of its input")
    weights = next(t for t in graph.graph.initializer if t.name == conv.input[1])
    w = numpy_helper.to_array(weights)
    if w.shape[1] != 1:
        raise ConfigError(f"the first convolution takes {w.shape[1]} channels, not one")
    wide = np.zeros((w.shape[0], channels, *w.shape[2:]), dtype=w.dtype)
    wide[:, :1] = w
    weights.CopyFrom(numpy_helper.from_array(wide, weights.name))
    pads = numpy_helper.from_array(np.array([0, 0, 0, 0, 0, channels - 1, 0, 0]), "scan_pads")
    graph.graph.initializer.append(pads)
    pad = helper.make_node("Pad", [scan, pads.name], ["scan_widened"], name="widen_scan")
    conv.input[0] = "scan_widened"
    graph.graph.node.insert(0, pad)
    onnx.checker.check_model(graph)
    return graph


def pad_quantized_input(graph: Any) -> Any:
    """Pad the quantised input (uint8) instead of the float one: quantise, dequantise,
    pad and quantise again become quantise and pad with the zero point (the quantised
    0.0, exactly), as the quantiser gave the padded tensor the input's scale and zero
    point. Saves a few percent of int8 inference at batch 1."""
    nodes = {node.name: node for node in graph.graph.node}
    pad = nodes["widen_scan"]
    producers = {out: node for node in graph.graph.node for out in node.output}
    consumers = {inp: node for node in graph.graph.node for inp in node.input}
    dequantize, quantize = producers[pad.input[0]], consumers[pad.output[0]]
    if (dequantize.op_type, quantize.op_type) != ("DequantizeLinear", "QuantizeLinear") or (
        list(dequantize.input[1:]) != list(quantize.input[1:])
    ):
        raise ConfigError("the quantiser did not give the padded input the input's scale")
    pad.input[0] = dequantize.input[0]
    pad.input.append(dequantize.input[2])  # the constant to pad with: the zero point
    pad.output[0] = quantize.output[0]
    graph.graph.node.remove(dequantize)
    graph.graph.node.remove(quantize)
    onnx.checker.check_model(graph)
    return graph


def _check_same_function(fp32_path: Path, widened: bytes, scans: F32) -> None:
    fp32 = load_model(fp32_path)
    diff = np.abs(model_from_bytes(widened, fp32.info).logits(scans) - fp32.logits(scans)).max()
    if diff > 1e-4:
        raise RuntimeError(f"the widened graph differs from the fp32 one by {diff}; a bug")


def quantize(fp32_path: Path, out_path: Path, cfg: QuantizeConfig) -> dict[str, Any]:
    """Write the int8 graph to ``out_path``; return the settings it was made with."""
    scans = calibration_scans(cfg)

    class Reader(q.CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches: Iterator[dict[str, F32]] = iter(
                {"scan": scans[i : i + 64]} for i in range(0, len(scans), 64)
            )

        def get_next(self) -> dict[str, F32] | None:
            return next(self.batches, None)

    settings: dict[str, Any] = {
        "tool": f"onnxruntime {ort.__version__} quantize_static",
        "format": "QDQ",
        "weights": "int8, per channel" if cfg.per_channel else "int8, per tensor",
        "activations": "uint8",
        "calibration": {
            "method": "MinMax",
            "generator": "inferstream.apps.eggs.phantom",
            "seed": cfg.calibration_seed,
            "scans": len(scans),
            "difficulties": list(cfg.calibration_difficulties),
        },
        "input_padded_to_channels": cfg.input_channels,
        "input_padding": "zeros, after quantising the input (its zero point)",
    }
    widened = widen_input(onnx.load(str(fp32_path)), cfg.input_channels)
    _check_same_function(fp32_path, widened.SerializeToString(), scans[:256])
    q.quantize_static(
        widened,
        str(out_path),
        Reader(),
        quant_format=q.QuantFormat.QDQ,
        per_channel=cfg.per_channel,
        activation_type=q.QuantType.QUInt8,
        weight_type=q.QuantType.QInt8,
        calibrate_method=q.CalibrationMethod.MinMax,
    )
    onnx.save(pad_quantized_input(onnx.load(str(out_path))), str(out_path))
    return settings


def _cpu_rate(model: Model, batch: F32, seconds: float) -> float:
    """Scans per second of this thread's CPU time: other work on a shared machine
    lengthens the wall clock, much less the CPU a model needs."""
    done, started = 0, time.thread_time()
    while (spent := time.thread_time() - started) < seconds:
        model.logits(batch)
        done += len(batch)
    return done / spent


def throughput(
    models: Mapping[str, Model], scans: F32, batch: int, rounds: int = ROUNDS, seconds: float = 0.15
) -> dict[str, list[float]]:
    """Each model's scans/s (CPU time, one thread) at ``batch`` in each of ``rounds``
    rounds that take turns between the models, so load on the machine falls on all."""
    inputs = np.ascontiguousarray(scans[:batch])
    for model in models.values():
        _cpu_rate(model, inputs, 0.05)  # first runs: allocations, caches
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            rates[name].append(_cpu_rate(model, inputs, seconds))
    return rates


def _throughput_record(
    fp32: Model, int8: Model, scans: F32, rounds: int = ROUNDS
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "measured": "scans per CPU-second, one thread, ONNX Runtime serving options; "
        f"medians of {rounds} rounds taking turns, the ratio the median of the rounds' ratios",
        "cpu": _cpu_name(),
        "vnni": _vnni(),
        "load_1min": round(os.getloadavg()[0], 2),
    }
    for batch in BATCHES:
        rates = throughput({"fp32": fp32, "int8": int8}, scans, batch, rounds)
        ratios = [i / f for f, i in zip(rates["fp32"], rates["int8"], strict=True)]
        record[f"batch_{batch}"] = {
            "fp32": round(statistics.median(rates["fp32"])),
            "int8": round(statistics.median(rates["int8"])),
            "ratio": round(statistics.median(ratios), 2),
        }
    return record


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.machine()


def _vnni() -> str:
    """Whether the CPU has the int8 dot-product instructions ONNX Runtime's int8
    convolutions are fastest with."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "VNNI unknown"
    found = [name for flag, name in (("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"))
             if flag in flags]  # fmt: skip
    return " and ".join(found) if found else "no VNNI"


def decision(held_out: Comparison) -> str:
    fp32, int8 = held_out.reference_accuracy, held_out.candidate_accuracy
    verdict = "served" if held_out.within(TOLERANCE_POINTS) else "not served"
    return (
        f"{verdict}: held-out accuracy {int8:.4f} against fp32 {fp32:.4f} "
        f"({held_out.difference_points:+.2f} points; the rule: at most "
        f"{TOLERANCE_POINTS} points below)"
    )


def metadata(fp32_path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The int8 model's ``.json`` before it is measured: the fp32 model's contract and
    training record, a version of its own, and where it comes from."""
    fp32 = json.loads(fp32_path.with_suffix(".json").read_text())
    return {
        **fp32,
        "version": f"{fp32['version']}-int8",
        "quantized_from": {
            "file": fp32_path.name,
            "version": fp32["version"],
            "sha256": hashlib.sha256(fp32_path.read_bytes()).hexdigest(),
        },
        "quantization": settings,
    }


def measured(held_out: Comparison, speed: dict[str, Any]) -> dict[str, Any]:
    """What the ``.json`` adds once measured: the decision and the figures behind it."""
    return {
        SERVE_BY_DEFAULT: held_out.within(TOLERANCE_POINTS),
        "decision": decision(held_out),
        "held_out": held_out.to_json(),
        "throughput": speed,
    }


def remeasure(models: Path, card: Path, rounds: int = ROUNDS) -> dict[str, Any]:
    """Measure the shipped fp32 and int8 models' throughput again on this machine;
    rewrite the int8 model's ``.json`` record of it and the model card."""
    fp32 = load_model(models / f"{FP32_MODEL}.onnx")
    int8_path = models / f"{INT8_MODEL}.onnx"
    if not int8_path.is_file():
        raise ConfigError(
            f"no int8 model to measure in {models}: make it first with "
            "python -m inferstream.apps.eggs.quantize"
        )
    int8 = load_model(int8_path)
    meta = json.loads(int8_path.with_suffix(".json").read_text())
    sample = _speed_sample(QuantizeConfig.held_out_seed)
    meta["throughput"] = _throughput_record(fp32, int8, sample, rounds)
    int8_path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    _write_card(fp32, card, models)
    return dict(meta["throughput"])


def _speed_sample(seed: int) -> F32:
    """The preprocessed scans the throughput is measured on: one full micro-batch."""
    return preprocess_batch(next(generate(max(BATCHES), seed=seed))[1])


def _write_card(fp32: Model, card: Path, models: Path) -> None:
    seconds = float(dict(fp32.info.extra).get("trained_on", {}).get("train_seconds", 0))
    write_card(card, fp32, evaluate(fp32, CARD_SEED, CARD_SCANS), seconds, models)
    print(f"card written to {card}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=APP.models_dir, help="models folder")
    parser.add_argument("--card", type=Path, default=Path("docs/model-card.md"))
    parser.add_argument("-n", type=int, default=QuantizeConfig.held_out_scans, help="held-out")
    parser.add_argument(
        "--remeasure",
        action="store_true",
        help="keep both models; only measure their throughput again on this machine and "
        "rewrite the int8 model's record of it and the card",
    )
    args = parser.parse_args(argv)
    if args.remeasure:
        print(json.dumps(remeasure(args.models, args.card), indent=2))
        return
    cfg = QuantizeConfig(held_out_scans=args.n)
    fp32_path = args.models / f"{FP32_MODEL}.onnx"
    out_path = args.models / f"{INT8_MODEL}.onnx"
    started = time.monotonic()
    meta = metadata(fp32_path, quantize(fp32_path, out_path, cfg))
    out_path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"quantised in {time.monotonic() - started:.0f}s: {out_path}", flush=True)
    fp32, int8 = load_model(fp32_path), load_model(out_path)
    held_out = compare_models(fp32, int8, cfg.held_out_seed, cfg.held_out_scans)
    print(decision(held_out), flush=True)
    meta.update(
        measured(held_out, _throughput_record(fp32, int8, _speed_sample(cfg.held_out_seed)))
    )
    out_path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps({k: meta[k] for k in ("held_out", "throughput")}, indent=2))
    _write_card(fp32, args.card, args.models)


if __name__ == "__main__":
    main()


__all__ = ["QuantizeConfig", "quantize", "remeasure", "throughput", "widen_input"]
