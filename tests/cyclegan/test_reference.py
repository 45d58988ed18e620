"""The reference CycleGAN's generators in (translate, evaluate) and ours out, against a re-creation of its modules.

    python -m pytest tests/cyclegan/test_reference.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cyclegan import checkpoint, evaluate, export_reference, translate
from cyclegan.config import TrainConfig
from cyclegan.images import save_png
from cyclegan.networks import build_generator
from cyclegan.reference import GENERATOR_FILES, OPTIONS_FILE
from tests.cyclegan.reference_networks import define_G

NGF = 8  # small, so that a 256x256 slice runs in a moment on the CPU


def _reference(netG: str, input_nc: int = 1, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A reference generator with every weight random (biases too, so that a mix-up of two of them shows)."""
    torch.manual_seed(seed)
    net = define_G(input_nc, input_nc, NGF, netG, **kwargs)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)
    return net.eval()


def _save_pair(folder: Path, g_a: torch.nn.Module, g_b: torch.nn.Module, prefix: str = "latest") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, g in (("A", g_a), ("B", g_b)):
        torch.save(g.state_dict(), folder / f"{prefix}_net_G_{name}.pth")  # as the reference's save_networks does
    return folder


def _grey(ref: torch.nn.Module, x: torch.Tensor, input_nc: int) -> torch.Tensor:
    """What the reference module makes of a grey slice: the slice in each input channel, the outputs averaged."""
    with torch.no_grad():
        return ref(x.expand(-1, input_nc, -1, -1)).mean(1, keepdim=True)


CASES = [("resnet_9blocks", 1, {}), ("resnet_6blocks", 3, {}), ("resnet_6blocks", 1, {"use_dropout": True}),
         ("unet_256", 1, {}), ("unet_128", 3, {"use_dropout": True})]


@pytest.mark.parametrize("netG,input_nc,kwargs", CASES,
                         ids=[f"{c[0]}-{c[1]}ch{'-dropout' * bool(c[2])}" for c in CASES])
def test_a_reference_pair_loads_as_our_two_directions(tmp_path, netG, input_nc, kwargs):
    ref_a, ref_b = _reference(netG, input_nc, 0, **kwargs), _reference(netG, input_nc, 1, **kwargs)
    cfg, g_t1_t2, g_t2_t1 = checkpoint.load_generators(_save_pair(tmp_path / "ckpt", ref_a, ref_b))
    size = 128 if netG == "unet_128" else 256
    assert (cfg.generator, cfg.ngf, cfg.resize) == ({"unet_256": "unet", "unet_128": "unet"}.get(netG, netG), NGF, size)
    if netG.startswith("unet"):
        assert cfg.unet_depth == {"unet_256": 8, "unet_128": 7}[netG]
    side = 64 if netG.startswith("resnet") else size  # a ResNet takes any multiple of 4
    x = torch.rand(2, 1, side, side) * 2 - 1
    with torch.no_grad():
        assert torch.equal(g_t1_t2(x), _grey(ref_a, x, input_nc))  # G_A: T1 -> T2
        assert torch.equal(g_t2_t1(x), _grey(ref_b, x, input_nc))


def test_translate_reads_a_reference_pair_and_writes_what_the_reference_module_makes(tmp_path):
    ref_a, ref_b = _reference("resnet_9blocks", 3, 0), _reference("resnet_9blocks", 3, 1)
    ckpt = _save_pair(tmp_path / "ckpt", ref_a, ref_b, prefix="15")  # an epoch's files, named by one of them
    rng = np.random.default_rng(0)
    slice_ = rng.random((200, 180)).astype(np.float32)  # not square, not the model's size
    (tmp_path / "in").mkdir()
    save_png(slice_, tmp_path / "in" / "s.png")
    image = np.asarray(Image.open(tmp_path / "in" / "s.png"), np.float32) / 255
    for direction, ref in (("t1-t2", ref_a), ("t2-t1", ref_b)):
        out = tmp_path / direction
        assert translate.main(["--checkpoint", str(ckpt / "15_net_G_B.pth"), "--direction", direction,
                               str(tmp_path / "in" / "s.png"), "--out", str(out)]) == 0
        expected = translate.translate_image(_Grey(ref, 3), image, 256)
        save_png(expected, tmp_path / f"expected-{direction}.png")
        got, want = (np.asarray(Image.open(p)) for p in (out / "s.png", tmp_path / f"expected-{direction}.png"))
        assert got.shape == (200, 180) and np.array_equal(got, want)
    # A model trained with T1 in trainB/: --reference-t1 B swaps the directions.
    out = tmp_path / "swapped"
    assert translate.main(["--checkpoint", str(ckpt / "15_net_G_A.pth"), "--reference-t1", "B", "--direction", "t2-t1",
                           str(tmp_path / "in" / "s.png"), "--out", str(out)]) == 0
    assert np.array_equal(np.asarray(Image.open(out / "s.png")), np.asarray(Image.open(tmp_path / "t1-t2" / "s.png")))


class _Grey(torch.nn.Module):
    def __init__(self, ref: torch.nn.Module, input_nc: int) -> None:
        super().__init__()
        self.ref, self.input_nc = ref, input_nc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _grey(self.ref, x, self.input_nc)


@pytest.mark.slow  # draws the phantom and scores its whole val split
def test_evaluate_scores_a_reference_pair_on_the_phantom(tmp_path, capsys):
    ckpt = _save_pair(tmp_path / "ckpt", _reference("unet_128"), _reference("unet_128", seed=1))
    assert evaluate.main(["--checkpoint", str(ckpt), "--split", "val"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["evaluation"] == "paired" and scores["resize"] == 128 and scores["slices"] > 0
    assert 0 <= scores["ssim_t1_t2"] <= 1 and "ssim_t1_t2_sd" in scores


def _our_export(folder: Path, cfg: TrainConfig) -> Path:
    torch.manual_seed(0)
    gens = [build_generator(cfg) for _ in range(2)]
    with torch.no_grad():
        for g in gens:
            for p in g.parameters():
                p.normal_(0, 0.05)
    folder.mkdir(parents=True)
    checkpoint.save(folder / checkpoint.MODEL, {"config": cfg.to_dict(), "metrics": {}, "split": {},
                                                "g_t1_t2": gens[0].state_dict(), "g_t2_t1": gens[1].state_dict()})
    return folder


@pytest.mark.parametrize("cfg,netG", [
    (TrainConfig(generator="resnet_6blocks", ngf=NGF, resize=64), "resnet_6blocks"),
    (TrainConfig(unet_depth=8, ngf=NGF, resize=256), "unet_256"),
    (TrainConfig(unet_depth=6, ngf=NGF, resize=64, dropout=0.0), None),  # no --netG: UnetGenerator(num_downs=6)
])
def test_our_export_loads_into_the_reference_module(tmp_path, cfg, netG):
    export = _our_export(tmp_path / "export", cfg)
    out = tmp_path / "reference"
    assert export_reference.main(["--checkpoint", str(export), "--out", str(out)]) == 0
    _, ours, _ = checkpoint.load_generators(export)
    if netG is not None:
        ref = define_G(1, 1, NGF, netG)
    else:
        from tests.cyclegan.reference_networks import UnetGenerator, get_norm_layer
        ref = UnetGenerator(1, 1, cfg.unet_depth, NGF, get_norm_layer("instance"))
    ref.load_state_dict(torch.load(out / GENERATOR_FILES[0], weights_only=True))  # strict: every name and shape
    options = (out / OPTIONS_FILE).read_text()
    assert (f"--netG {netG}" in options) if netG else "num_downs=6" in options
    x = torch.rand(2, 1, cfg.resize, cfg.resize) * 2 - 1
    with torch.no_grad():
        assert torch.equal(ref.eval()(x), ours(x))


@pytest.mark.parametrize("cfg,match", [
    (TrainConfig(unet_depth=6, resize=64, ngf=NGF, upsample="resize"), "upsample='resize' has no equivalent"),
    (TrainConfig(unet_depth=4, resize=64, ngf=NGF), "at least 5 downs"),
])
def test_an_export_the_reference_cannot_hold_is_refused_before_writing(tmp_path, capsys, cfg, match):
    export = _our_export(tmp_path / "export", cfg)
    assert export_reference.main(["--checkpoint", str(export), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {export}: ") and match in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def _refused(tmp_path: Path, capsys, folder: Path) -> str:
    assert translate.main(["--checkpoint", str(folder), "--direction", "t1-t2", str(tmp_path / "x.png"),
                           "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()
    return err


def test_reference_files_of_an_unknown_layout_are_refused_in_one_line(tmp_path, capsys):
    save_png(np.zeros((32, 32), np.float32), tmp_path / "x.png")
    batch = _save_pair(tmp_path / "batch", _reference("unet_128", norm="batch"), _reference("unet_128", norm="batch"))
    assert "a generator with batch norm (model.model.1.model.2); allowed: instance norm" in _refused(tmp_path, capsys,
                                                                                                    batch)
    other = tmp_path / "other"
    other.mkdir()
    torch.save({"conv.weight": torch.zeros(3, 3)}, other / "latest_net_G_A.pth")
    torch.save({"conv.weight": torch.zeros(3, 3)}, other / "latest_net_G_B.pth")
    assert f"{other / 'latest_net_G_A.pth'}: not a reference generator's layout" in _refused(tmp_path, capsys, other)
    half = tmp_path / "half"
    half.mkdir()
    torch.save(_reference("resnet_6blocks").state_dict(), half / "latest_net_G_A.pth")
    assert f"{half / 'latest_net_G_B.pth'}: no such file" in _refused(tmp_path, capsys, half)
    five = _save_pair(tmp_path / "five", *[define_G(1, 1, NGF, "resnet_6blocks")] * 2)
    for f in five.iterdir():  # the sixth block's weights gone: a ResNet of 5 blocks, which define_G never builds
        torch.save({k: v for k, v in torch.load(f, weights_only=True).items() if not k.startswith("model.15.")}, f)
    assert "a ResnetGenerator of 5 blocks" in _refused(tmp_path, capsys, five)
    mixed = _save_pair(tmp_path / "mixed", _reference("resnet_6blocks"), _reference("resnet_9blocks"))
    assert "is not the architecture of latest_net_G_A.pth" in _refused(tmp_path, capsys, mixed)
    junk = tmp_path / "junk"
    junk.mkdir()
    for name in GENERATOR_FILES:
        (junk / name).write_bytes(b"not a pickle")
    assert "unreadable as a state dict" in _refused(tmp_path, capsys, junk)


def test_instance_norm_statistics_of_old_checkpoints_are_dropped_as_the_reference_does(tmp_path):
    """PyTorch before 0.4 saved running statistics of instance norm; the reference's loader deletes them."""
    ref = _reference("unet_128")
    state = ref.state_dict()
    state["model.model.1.model.2.running_mean"] = torch.ones(2 * NGF)
    state["model.model.1.model.2.running_var"] = torch.ones(2 * NGF)
    (tmp_path / "old").mkdir()
    for name in GENERATOR_FILES:
        torch.save(state, tmp_path / "old" / name)
    _, g, _ = checkpoint.load_generators(tmp_path / "old")
    x = torch.rand(1, 1, 128, 128) * 2 - 1
    with torch.no_grad():
        assert torch.equal(g(x), ref(x))


def test_a_resize_the_generator_cannot_take_is_refused(tmp_path, capsys):
    ckpt = _save_pair(tmp_path / "ckpt", _reference("resnet_6blocks"), _reference("resnet_6blocks"))
    save_png(np.zeros((32, 32), np.float32), tmp_path / "x.png")
    assert translate.main(["--checkpoint", str(ckpt), "--resize", "30", "--direction", "t1-t2",
                           str(tmp_path / "x.png"), "--out", str(tmp_path / "out")]) == 2
    assert "--resize 30: generator='resnet_6blocks' needs resize divisible by 4" in capsys.readouterr().err
