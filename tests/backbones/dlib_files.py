"""Writing a network in dlib's serialisation format, as dlib's own ``serialize`` does (each layer's version, the layers
beneath it, then its settings), for testing nla's reader without dlib: a ``DlibResNet``'s weights as a ``.dat``.

Written from dlib's format as its sources describe it (dlib/serialize.h, dlib/dnn/core.h, layers.h, input.h, loss.h),
independently of :mod:`nla.backbones.dlib_format`, which reads the whole file in one pass.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nla.backbones.dlib_format import STAGES
from nla.backbones.dlib_resnet import DLIB_MEAN_RGB, DlibResNet


def integer(value: int) -> bytes:
    magnitude = abs(value)
    body = magnitude.to_bytes(max(1, (magnitude.bit_length() + 7) // 8), "little")
    return bytes([len(body) | (0x80 if value < 0 else 0)]) + body


def real(value: float) -> bytes:
    mantissa, exponent = math.frexp(value)
    return integer(int(mantissa * (1 << 53))) + integer(exponent - 53)


def boolean(value: bool) -> bytes:
    return b"1" if value else b"0"


def string(value: str) -> bytes:
    return integer(len(value)) + value.encode()


def tensor(values: torch.Tensor, dims: tuple[int, int, int, int]) -> bytes:
    flat = values.detach().reshape(-1).float()
    return integer(2) + b"".join(integer(d) for d in dims) + struct.pack(f"<{flat.numel()}f", *flat.tolist())


def empty() -> bytes:
    return tensor(torch.zeros(0), (0, 0, 0, 0))


def alias(dims: tuple[int, int, int, int]) -> bytes:
    return integer(1) + b"".join(integer(d) for d in dims)


def conv(module: torch.nn.Conv2d, version: str = "con_4") -> bytes:
    n, k, nr, nc = module.weight.shape
    stride = module.stride[0]
    padding = nr // 2 if stride == 1 else 0
    params = torch.cat([module.weight.reshape(-1), module.bias.reshape(-1)])
    out = string(version) + tensor(params, (params.numel(), 1, 1, 1)) + integer(n) + integer(nr) + integer(nc)
    out += integer(stride) + integer(stride) + integer(padding) + integer(padding)
    out += alias((n, k, nr, nc)) + alias((1, n, 1, 1))
    out += real(1.0) + real(1.0) + real(1.0) + real(0.0)
    return out + (boolean(True) if version in ("con_5", "con_6") else b"")


def affine(module: Any) -> bytes:
    c = module.weight.numel()
    params = torch.cat([module.weight, module.bias])
    out = string("affine_") + tensor(params, (1, 2 * c, 1, 1)) + alias((1, c, 1, 1)) + alias((1, c, 1, 1))
    return out + integer(0)  # CONV_MODE


def relu() -> bytes:
    return string("relu_")


def pool(name: str, window: int, stride: int) -> bytes:
    padding = window // 2 if stride == 1 else 0
    return string(name) + b"".join(integer(v) for v in (window, window, stride, stride, padding, padding))


def fc(weight: torch.Tensor) -> bytes:
    outputs, inputs = weight.shape
    matrix = weight.t().contiguous()  # dlib multiplies rows by an inputs x outputs matrix
    out = string("fc_2") + integer(outputs) + integer(inputs) + tensor(matrix, (inputs, outputs, 1, 1))
    out += alias((inputs, outputs, 1, 1)) + alias((1, outputs, 1, 1)) + integer(1)  # FC_NO_BIAS
    return out + real(1.0) + real(1.0) + real(1.0) + real(0.0)


# A node writes itself as dlib does: ``layer`` its version, the node beneath, its settings and buffers; ``tag`` and
# ``skip`` their version and the node beneath; the bottom layer its version, the input layer and its settings.
Node = Callable[[], bytes]


def layer(details: bytes, beneath: Node) -> Node:
    return lambda: integer(2) + beneath() + details + boolean(False) * 3 + empty() * 3


def tag(beneath: Node) -> Node:
    return lambda: integer(1) + beneath()


def bottom(stem_conv: torch.nn.Conv2d, size: int) -> Node:
    def write() -> bytes:
        input_layer = string("input_rgb_image_sized") + b"".join(real(m) for m in DLIB_MEAN_RGB)
        input_layer += integer(size) + integer(size)
        return integer(3) + input_layer + conv(stem_conv) + boolean(False) * 3 + empty() * 3 + integer(1)

    return write


def block_nodes(block: Any, down: bool, beneath: Node) -> Node:
    tagged = tag(beneath)
    main = layer(conv(block.conv1), tagged)
    main = layer(affine(block.affine1), main)
    main = layer(relu(), main)
    main = layer(conv(block.conv2), main)
    main = layer(affine(block.affine2), main)
    if down:  # add_prev2<avg_pool<skip1<tag2<block<tag1<...>>>>>>
        main = layer(pool("avg_pool_2", 2, 2), tag(tag(main)))
    return layer(relu(), layer(string("add_prev_"), main))


def network_bytes(model: DlibResNet, size: int = 150) -> bytes:
    """``model``'s weights as dlib's face network file (its head as the embedding, without a bias)."""
    node = bottom(model.stem.conv, size)
    node = layer(affine(model.stem.affine), node)
    node = layer(relu(), node)
    node = layer(pool("max_pool_2", 3, 2), node)
    for stage, (blocks, down) in zip(model.stages, STAGES):
        for index in range(blocks):
            node = block_nodes(stage[index], down and index == 0, node)
    node = layer(pool("avg_pool_2", 0, 1), node)
    node = layer(fc(model.fc.weight), node)
    loss = string("loss_metric_2") + real(0.04) + real(0.6)
    return integer(1) + loss + node()


def write_face_network(path: Path, model: DlibResNet, size: int = 150) -> Path:
    path.write_bytes(network_bytes(model, size))
    return path


def tiny_face_network(seed: int = 0, widths: tuple[int, ...] = (2, 3, 4, 4, 5), embedding: int = 6) -> DlibResNet:
    """A face network of the released topology with a few channels and random weights (nothing zero)."""
    torch.manual_seed(seed)
    model = DlibResNet(num_classes=embedding, widths=widths)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.3)
        model.fc.bias.zero_()  # dlib's embedding has no bias
    return model.eval()
