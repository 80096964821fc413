"""Inception-v3 up to the 2048-d pool3 features, in the variant FID is defined with.

The FID of the literature (the paper's numbers included) is computed with the TensorFlow Inception graph of
2015-12-05; pytorch-fid ported its weights (`pt_inception-2015-12-05-6726825d.pth`). That graph differs from
torchvision's Inception-v3 in three places, reproduced here: the average pools inside the A, C and first E
blocks do not count padding, and the last E block pools with a max instead of an average. The module names
equal torchvision's, so the ported state dict loads as it is (`strict`), including its 1008-way classifier.

Inputs are images in [-1, 1] of any size (1 or 3 channels): they are resized bilinearly to 299 x 299, as
pytorch-fid does. Nothing is downloaded: `load_inception(path)` reads weights the user put somewhere, as
safetensors (what `imm-orch data inception` writes after checking the file's published hash) or as the
original `.pth` through torch's weights-only loader; neither runs code from the file.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_SHA256_PREFIX = "6726825d"  # torch.hub's convention: the file name ends in its SHA-256's first hex digits
WEIGHTS_HELP = (f"FID needs pytorch-fid's Inception-v3 weights ({WEIGHTS_FILE}, a release asset of "
                "github.com/mseitzer/pytorch-fid); fetch it on a machine with internet access, run `imm-orch data "
                f"inception {WEIGHTS_FILE} --out inception.safetensors`, put that on a path or S3, and set "
                "eval.inception_weights=PATH or s3://bucket/key")


class BasicConv2d(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)
        self.add_module("relu", nn.ReLU(inplace=True))


def avg3(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)  # TF's pooling: padding not counted


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(avg3(x)),
        ], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        dbl = x
        for i in range(1, 6):
            dbl = getattr(self, f"branch7x7dbl_{i}")(dbl)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            dbl,
            self.branch_pool(avg3(x)),
        ], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """`max_pool`: the last block of the FID graph pools with a max (a quirk of the TF graph, kept)."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else avg3(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl),
            self.branch_pool(pooled),
        ], 1)


class InceptionV3(nn.Module):
    """x in [-1, 1], (N, 1 or 3, H, W) -> pool3 features (N, 2048)."""

    dim = 2048

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)  # unused for FID; present so the ported weights load strictly

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean((2, 3))


def load_inception(path: str | Path) -> InceptionV3:
    """The FID network with the state dict at `path` (a local file), in eval mode; a clear error otherwise."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"eval.inception_weights: no file at {str(path)!r}. {WEIGHTS_HELP}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(p)
    else:
        state = torch.load(p, map_location="cpu", weights_only=True)  # torch's allowlisting unpickler
    net = InceptionV3()

    def keys(d) -> set[str]:  # BatchNorm's step counters are absent from files saved by old torch versions
        return {k for k in d if not k.endswith("num_batches_tracked")}

    expected, got = keys(net.state_dict()), keys(state) if isinstance(state, dict) else set()
    if got != expected:
        missing, extra = sorted(expected - got)[:3], sorted(got - expected)[:3]
        raise ValueError(f"eval.inception_weights: {str(path)!r} is not the pytorch-fid Inception-v3 state dict "
                         f"(missing {missing}, unexpected {extra}). {WEIGHTS_HELP}")
    net.load_state_dict(state, strict=False)
    return net.eval().requires_grad_(False)


def to_safetensors(path: Path, out: Path, sha256_prefix: str = WEIGHTS_SHA256_PREFIX) -> int:
    """Check the `.pth` against its published hash and that it is the FID Inception, then write its tensors to
    `out` as safetensors (renamed into place when whole); the number of tensors."""
    from safetensors.torch import save_file

    from imm.data.remote import file_sha256

    digest = file_sha256(path)
    if not digest.startswith(sha256_prefix):
        raise ValueError(f"weights: {str(path)!r} has SHA-256 {digest[:16]}..., not the {sha256_prefix}... that "
                         f"{WEIGHTS_FILE}'s name publishes. {WEIGHTS_HELP}")
    state = load_inception(path).state_dict()
    tmp = out.with_name(f".{out.name}.partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"source": WEIGHTS_FILE})
    tmp.replace(out)
    return len(state)
