"""Paired T1-/T2-weighted brain phantom: axial slices of one synthetic head, offline and seeded.

The study's real slices are unpaired, so nothing there says what the "true" T2 of a T1 slice looks like.
This phantom gives both contrasts of the same anatomy, so a translation can be scored against the
other contrast itself. Tissue maps (air, scalp fat, skull, CSF, grey and white matter) are built
on a coordinate grid from a smooth anatomy of the slice level z, so neighbouring slices are near
copies; intensities come from the spin-echo signal equation, then partial volume, a receive bias
field and Rician noise are added.

Look at it:  python -m cyclegan.phantom --out DIR   (writes t1_XX.png / t2_XX.png for a few slices)
A large set: python -m cyclegan.phantom --volumes 340 --slices 150 --size 256 --out DIR
             (T1/sub-NNN_T1w.nii.gz and T2/sub-NNN_T2w.nii.gz, one paired head each: 51,000 slices a contrast;
             one process a core, about 4 s a head on one core)
Real anatomy: python -m cyclegan.phantom --from DATA_DIR --out OUT [--seed S]   (see cyclegan.anatomy)
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

T1W_TR, T1W_TE = 500.0, 15.0  # ms, T1-weighted spin echo
T2W_TR, T2W_TE = 4000.0, 100.0  # ms, T2-weighted spin echo
LEVEL_RANGE = (0.15, 0.85)  # slab of the head sampled; the very top and bottom are not brain-like in this model
BRIGHTEST = 0.9  # the brightest tissue's noiseless signal; +10% bias and noise then stay almost under 1
BIAS_AMPLITUDE = 0.1
NOISE_SIGMA = 0.01  # of full scale: per-channel std of the complex noise before the magnitude
PARTIAL_VOLUME_SIGMA = 0.7  # px at the output size

AIR, FAT, BONE, CSF, GM, WM = range(6)
TISSUES = ("air", "fat", "bone", "csf", "gm", "wm")
# T1 (ms), T2 (ms), proton density, at 1.5 T. WM, CSF and fat are the commonly quoted table values
# (e.g. the "Relaxation (NMR)" table: WM 780/90, CSF 4200-4500/2100-2300, fat 240-250/60-80); PD is the
# usual relative water content (WM ~0.7, GM ~0.8, CSF 1). GM T1 is taken at 1200 ms, inside the spread of
# 1.5 T measurements (~900-1400 ms): with 920 ms the 0.8-vs-0.69 PD makes GM brighter than WM at TR 500,
# the opposite of real T1w images (which also owe WM/GM contrast to magnetisation transfer).
# Compact bone's T2 is under 1 ms, so a spin echo sees almost nothing: only its low PD matters here.
TISSUE_PROPS = np.array(
    [
        [1.0, 1.0, 0.0],  # air
        [260.0, 85.0, 0.9],  # fat
        [500.0, 50.0, 0.05],  # bone
        [4000.0, 2000.0, 1.0],  # CSF
        [1200.0, 100.0, 0.8],  # GM
        [790.0, 92.0, 0.69],  # WM
    ]
)


@dataclass(frozen=True)
class Phantom:
    t1: np.ndarray  # float32 [n, size, size] in [0, 1], T1-weighted
    t2: np.ndarray  # float32 [n, size, size] in [0, 1], T2-weighted, same anatomy as t1[i]
    head: np.ndarray  # bool [n, size, size], everything that is not background air
    levels: np.ndarray  # float64 [n], slice level from bottom (0) to top (1) of the head, increasing
    labels: np.ndarray  # uint8 [n, size, size], tissue codes AIR..WM (index into TISSUES), before partial volume


def spin_echo(tr: float, te: float) -> np.ndarray:
    """Noiseless signal per tissue code, S = PD (1 - exp(-TR/T1)) exp(-TE/T2), brightest tissue at BRIGHTEST."""
    t1, t2, pd = TISSUE_PROPS.T
    s = pd * (1.0 - np.exp(-tr / t1)) * np.exp(-te / t2)
    return s * (BRIGHTEST / s.max())


def make_phantom(n_slices: int, size: int, seed: int = 0) -> Phantom:
    """`n_slices` axial slices of `size` x `size`, bottom to top; the anatomy depends on `seed` only."""
    if n_slices < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices}")
    if size < 8:
        raise ValueError(f"size must be >= 8 pixels, got {size}")
    # Separate streams so the anatomy of a seed does not change with n_slices or size.
    anatomy_rng, bias_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    lo, hi = LEVEL_RANGE
    levels = lo + (hi - lo) * (np.arange(n_slices) + 0.5) / n_slices  # slab centres: n=1 gives mid-head
    c = ((np.arange(size) + 0.5) / size * 2.0 - 1.0).astype(np.float32)
    y, x = np.meshgrid(c, c, indexing="ij")  # y grows down the image: front of the head at the top
    labels = _tissue_labels(levels, x, y, anatomy_rng)
    # One receive field for both contrasts: a paired acquisition is one session with one coil.
    bias = bias_field(levels, x, y, bias_rng)
    t1 = acquire(_partial_volume(labels, spin_echo(T1W_TR, T1W_TE)), bias, noise_rng)
    t2 = acquire(_partial_volume(labels, spin_echo(T2W_TR, T2W_TE)), bias, noise_rng)
    return Phantom(t1=t1, t2=t2, head=labels != AIR, levels=levels, labels=labels)


def _fourier(theta: np.ndarray, k: np.ndarray) -> np.ndarray:
    """[2K, pixels] basis cos(k theta), sin(k theta): per-slice shapes are then one small matmul."""
    kt = np.outer(k, theta).astype(np.float32)
    return np.concatenate([np.cos(kt), np.sin(kt)])


def _tissue_labels(levels: np.ndarray, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n, shape = len(levels), x.shape
    z = levels[:, None].astype(np.float32)
    xf, yf = x.ravel(), y.ravel()
    theta = np.arctan2(yf, xf)
    # Head: an ellipse longer front-to-back (like the 181x217 study slices) that narrows towards the crown
    # and the skull base, its outline bent by low-order Fourier terms whose coefficients are linear in z.
    scale = np.sqrt(1.0 - ((z - 0.45) / 0.6) ** 2)
    ax = rng.uniform(0.68, 0.8) * scale
    ay = rng.uniform(1.08, 1.26) * ax
    k = np.arange(2, 6)
    wobble = (rng.normal(0.0, 0.035, (2, 2 * len(k))) / np.tile(k, 2)).astype(np.float32)
    outline = 1.0 + (wobble[0] + wobble[1] * (z - 0.5) * 2.0) @ _fourier(theta, k)
    rho = np.sqrt((xf / ax) ** 2 + (yf / ay) ** 2) / outline  # 1 on the scalp surface
    # Gyri: a fold pattern cos(K theta + phi) whose phase phi wanders slowly around the head and with z, so
    # sulci are irregularly spaced; a sulcus is a CSF groove from the surface, lined by GM, the WM between
    # two sulci reaches up into the gyrus.
    k = np.arange(1, 5)
    wander = (rng.normal(0.0, 2.5, (2, 2 * len(k))) / np.tile(k, 2)).astype(np.float32)
    depth_coef = rng.normal(0.0, 0.3, (2, 2 * len(k))).astype(np.float32)
    thick_coef = rng.normal(0.0, 0.5, (2, 2 * len(k))).astype(np.float32)
    basis = _fourier(theta, k)
    drift = rng.uniform(8.0, 16.0) * rng.choice([-1.0, 1.0])  # rad per unit z: sulci move ~1-2 places over the slab
    phase = (wander[0] + wander[1] * (z - 0.5) * 4.0) @ basis + np.float32(drift) * z
    g = np.cos(int(rng.integers(26, 34)) * theta + phase)
    depth = np.clip(0.8 + (depth_coef[0] + depth_coef[1] * z) @ basis, 0.3, 1.3)  # sulci of uneven depth
    # Cortex of uneven thickness around the head (thin at the poles of some heads, thick at the sides of others).
    thick = np.clip(1.0 + (thick_coef[0] + thick_coef[1] * z) @ basis, 0.5, 1.7)
    groove = np.clip((g - 0.65) / 0.35, 0.0, 1.0) * depth
    wm_edge = 0.85 - 0.1 * thick - 0.045 * (g + 1.0) * depth
    shells = (rho <= 1.0, rho <= 0.93, rho <= 0.865, rho <= 0.85 - 0.15 * groove, rho <= wm_edge)
    labels = sum(s.astype(np.uint8) for s in shells).reshape(n, *shape)

    # Deep structures in mid levels, sized by a bump in z so they appear and vanish smoothly.
    z3 = z[:, :, None]
    zv = 0.5 + rng.uniform(-0.03, 0.03)

    def pair(cx: float, cy: float, a: float, b: float, tilt: float, spread: float) -> np.ndarray:
        """Squared elliptic radius to the nearer of two ellipses, each side's size and place drawn apart."""
        q = []
        for side in (-1.0, 1.0):
            s = rng.uniform(1.0 - spread, 1.0 + spread, 3)  # this side's size, lateral and front-back offsets
            u, v = x - side * cx * s[1], y - cy - spread * 0.1 * (s[2] - 1.0)
            ct, st = np.cos(side * tilt), np.sin(side * tilt)
            q.append(((ct * u + st * v) / (a * s[0])) ** 2 + ((-st * u + ct * v) / (b * s[0])) ** 2)
        return np.minimum(*q)

    wm = labels == WM
    nuclei_x = 0.2 + rng.uniform(-0.02, 0.02)
    nuclei = pair(nuclei_x, 0.04, 0.07, 0.14, 0.3, 0.1) < 1.5 * np.exp(-(((z3 - 0.42) / 0.1) ** 2)) - 0.5
    size = rng.uniform(0.75, 1.35)  # ventricles from a young adult's to an older one's
    ventricles = pair(0.085, -0.02, 0.05 * size, 0.25 * size, -0.2, 0.25) < (
        1.6 * np.exp(-(((z3 - zv) / 0.12) ** 2)) - 0.4)
    # Interhemispheric fissure: CSF with a GM lining, from the poles inward, reaching further towards the crown.
    far = np.abs(y) > np.clip(0.55 - 0.8 * (z3 - 0.35), 0.1, 1.0)
    mid = rng.uniform(-0.02, 0.02)
    labels[wm & nuclei] = GM
    labels[wm & ventricles] = CSF
    labels[far & (np.abs(x - mid) < 0.04) & (labels == WM)] = GM
    labels[far & (np.abs(x - mid) < 0.012) & (labels >= CSF)] = CSF
    _add_lesions(labels, z3, x, y, rng)
    return _deform(labels, levels, rng)


def _add_lesions(labels: np.ndarray, z3: np.ndarray, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> None:
    """A few small blobs in the white matter, each over a few slices: CSF-like lacunes or GM-like nodules."""
    for _ in range(int(rng.integers(2, 7))):
        r, phi = rng.uniform(0.25, 0.5), rng.uniform(0.0, 2.0 * np.pi)
        cx, cy, cz = r * np.cos(phi), 1.15 * r * np.sin(phi), rng.uniform(0.3, 0.7)
        a, b, c = rng.uniform(0.015, 0.05, 2).tolist() + [rng.uniform(0.02, 0.06)]
        on = np.flatnonzero(np.abs(z3[:, 0, 0] - cz) < c)  # only the slices it reaches: cheap for a small blob
        if len(on):
            q = ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 + ((z3[on] - cz) / c) ** 2
            labels[on] = np.where((q < 1.0) & (labels[on] == WM), rng.choice([CSF, GM]), labels[on])


def _deform(labels: np.ndarray, levels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The labels warped by a smooth random displacement that drifts slowly with z: no two places alike.

    The field is a sum of low in-plane frequencies (up to 2 waves across the image), its coefficients linear in
    z, so neighbouring slices move alike; a nearest-label gather keeps the labels crisp and costs little.
    """
    n, h, w = labels.shape
    k = np.arange(1, 5)
    amp = np.tile(0.045 / (k[:, None] ** 2 + k[None, :] ** 2) ** 0.8, (2, 2)).astype(np.float32)  # smooth: ~1/k^1.6
    z = (levels.astype(np.float32) - 0.5)[:, None, None]
    by, bx = (_fourier(np.pi * (np.arange(m) + 0.5) / m, k) for m in (h, w))  # [2K, h], [2K, w]
    shift = []
    for extent in (h, w):  # rows, then columns; amplitudes are fractions of the half-extent
        c = rng.normal(size=(2, 2 * len(k), 2 * len(k))).astype(np.float32) * amp
        shift.append(np.einsum("ah,nab,bw->nhw", by, c[0] + c[1] * z, bx, optimize=True) * (extent / 2))
    rows = np.clip(np.rint(np.arange(h, dtype=np.float32)[:, None] + shift[0]), 0, h - 1).astype(np.intp)
    cols = np.clip(np.rint(np.arange(w, dtype=np.float32)[None, :] + shift[1]), 0, w - 1).astype(np.intp)
    return labels[np.arange(n)[:, None, None], rows, cols]


def bias_field(levels: np.ndarray, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative field within 1 +- BIAS_AMPLITUDE: a low-order polynomial in x, y, z.

    `x`, `y` are in-plane coordinates in [-1, 1] (any [H, W] shape); the field is [len(levels), H, W].
    """
    cxy = rng.normal(size=5).astype(np.float32)
    f = cxy[0] * x + cxy[1] * y + cxy[2] * x * y + cxy[3] * (x * x - y * y) + cxy[4] * (x * x + y * y - 0.5)
    f = f + np.float32(rng.normal()) * (levels[:, None, None].astype(np.float32) - 0.5)
    return 1.0 + (BIAS_AMPLITUDE / np.abs(f).max()) * f


def _partial_volume(labels: np.ndarray, signal: np.ndarray) -> np.ndarray:
    # Blurring the signal equals blurring each tissue fraction and mixing, since the mix is linear.
    from scipy import ndimage  # here: a trial on real slices imports this module but draws no phantom (0.3 s)

    sigma = (0.0, PARTIAL_VOLUME_SIGMA, PARTIAL_VOLUME_SIGMA)  # in-plane only: slices are separate acquisitions
    return ndimage.gaussian_filter(signal.astype(np.float32)[labels], sigma=sigma)


def acquire(clean: np.ndarray, bias: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The noiseless signal times the receive field, as the magnitude of a noisy complex signal, in [0, 1]."""
    img = clean * bias
    # Magnitude of a complex signal with Gaussian noise in both channels: Rician, Rayleigh in the air.
    re = img + NOISE_SIGMA * rng.standard_normal(img.shape, dtype=np.float32)
    im = NOISE_SIGMA * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(np.hypot(re, im), 0.0, 1.0)


# NIfTI volumes hold scanner-like integers: 12-bit values in int16, as many scanners store them.
VOLUME_FULL_SCALE = 4095
VOXEL_MM = (1.0, 1.0, 1.2)  # in-plane and slice spacing of the written volumes


def write_volumes(out: Path, volumes: int, n_slices: int, size: int, seed: int = 0, workers: int | None = None
                  ) -> list[Path]:
    """Writes `volumes` heads as paired NIfTI volumes, T1/sub-NNN_T1w.nii.gz and T2/sub-NNN_T2w.nii.gz.

    Head k is `make_phantom(n_slices, size, seed * 1_000_003 + k)`, so each is its own anatomy and any one can be
    made again alone; the heads are drawn in `workers` processes (default: one a core)."""
    if volumes < 1:
        raise ValueError(f"volumes must be >= 1, got {volumes}")
    for domain in ("T1", "T2"):
        (out / domain).mkdir(parents=True, exist_ok=True)
    jobs = [(out, k, n_slices, size, seed * 1_000_003 + k) for k in range(volumes)]
    workers = workers or os.cpu_count() or 1
    if workers == 1 or volumes == 1:
        return [p for job in jobs for p in _write_head(*job)]
    with ProcessPoolExecutor(max_workers=min(workers, volumes)) as pool:
        return [p for paths in pool.map(_write_head, *zip(*jobs)) for p in paths]


def _write_head(out: Path, k: int, n_slices: int, size: int, seed: int) -> list[Path]:
    import nibabel as nib
    from nibabel.orientations import io_orientation

    from cyclegan.nifti import _from_display  # display slices -> the on-disk array of an affine's orientation

    ph = make_phantom(n_slices, size, seed)
    affine = np.diag([*VOXEL_MM, 1.0])
    paths = []
    for domain, slices in (("T1", ph.t1), ("T2", ph.t2)):
        data = _from_display(slices, io_orientation(affine))
        image = nib.Nifti1Image(np.round(data * VOLUME_FULL_SCALE).astype(np.int16), affine)
        path = out / domain / f"sub-{k:03d}_{domain}w.nii.gz"
        image.to_filename(path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a few slices of the paired T1/T2 phantom as PNGs, or, with "
                                     "--from, a paired benchmark simulated from the anatomy of real slices.")
    parser.add_argument("--out", type=Path, required=True,
                        help="directory for t1_XX.png / t2_XX.png (with --from: for T1/, T2/ and phantom.json)")
    parser.add_argument("--from", dest="source", type=Path,
                        help="data folder of T1/ and/or T2/ PNG slices whose anatomy both contrasts are simulated from")
    parser.add_argument("--n-slices", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=4, help="how many evenly spaced slices to write")
    parser.add_argument("--volumes", type=int, help="write this many paired heads as NIfTI volumes under OUT/T1 and "
                        "OUT/T2 (a data folder), each of --slices slices of --size")
    parser.add_argument("--slices", type=int, default=150, help="slices a volume (with --volumes)")
    parser.add_argument("--workers", type=int, help="processes drawing heads (with --volumes; default: one a core)")
    args = parser.parse_args(argv)
    if args.volumes is not None:
        if args.volumes < 1 or args.slices < 1 or args.size < 8:
            print(f"error: --volumes {args.volumes} --slices {args.slices} --size {args.size}: expected at least 1 "
                  "volume of at least 1 slice of at least 8 pixels", file=sys.stderr)
            return 2
        import time

        start = time.perf_counter()
        write_volumes(args.out, args.volumes, args.slices, args.size, args.seed, args.workers)
        print(f"wrote {args.volumes} paired heads ({args.volumes * args.slices:,} slices a contrast at "
              f"{args.size}x{args.size}) to {args.out} in {time.perf_counter() - start:.0f} s")
        return 0
    if args.source is not None:
        from cyclegan.anatomy import write_benchmark  # it imports cyclegan.data, which imports this module
        from cyclegan.data import DataError

        try:
            record = write_benchmark(args.source, args.out, args.seed)
        except (DataError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {len(record['anatomies'])} paired anatomies to {args.out}")
        return 0
    from PIL import Image  # only the viewer needs it

    ph = make_phantom(args.n_slices, args.size, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for i in np.unique(np.linspace(0, args.n_slices - 1, max(args.count, 1)).round().astype(int)):
        for name, vol in (("t1", ph.t1), ("t2", ph.t2)):
            Image.fromarray(np.round(vol[i] * 255).astype(np.uint8)).save(args.out / f"{name}_{i:02d}.png")
    print(f"wrote slices to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
