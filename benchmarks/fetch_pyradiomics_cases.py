"""Two more real labelled tumour scans, for judging on cases nobody tuned on.

    python benchmarks/fetch_pyradiomics_cases.py --out ../extra-real-tumours
    python benchmarks/bench_hitl_real.py --data ../extra-real-tumours --cases brain2 lung1

The shared cases (``../shared/data/real-tumours``: brain1, breast1, lung2) come
from the test data of the pyradiomics 3.1.0 source distribution. The same
distribution holds two more: ``brain2`` (MRI, T1 post-contrast, 256 x 256 x 23,
0.78 x 0.78 x 6.5 mm) and ``lung1`` (chest CT in HU, 512 x 512 x 48, 0.57 x
0.57 x 5 mm). This script downloads the source distribution from the package
index (checked against its SHA-256), reads their NRRD files (gzip-encoded
raw data after a text header; parsed here, no NRRD package needed) and writes
``NAME_image.nii.gz`` / ``NAME_label.nii.gz`` in RAS, as the shared folder has
them (``--check-shared`` converts lung2 too and compares it with the shared copy).

Licence: pyradiomics is BSD-3-Clause; it does not state the licence of the
patient data. So, as for the shared cases: measure with them, never copy them
into the project, never train shipped weights on them. ``--out`` must lie
outside the repository.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import sys
import tarfile
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
URL = ("https://files.pythonhosted.org/packages/03/c1/20fc2c50ab1e3304da36d866042a1905a2b05a1431ece35448ab6b4578f2/"
       "pyradiomics-3.1.0.tar.gz")
SHA256 = "24722c962a6bbd09bc39c1c67dbffe92435f9692a421fabaae8a6b4511eb48e4"
CASES = ("brain2", "lung1")
TYPES = {"short": "<i2", "int": "<i4", "unsigned char": "u1", "uchar": "u1", "float": "<f4", "double": "<f8",
         "ushort": "<u2", "unsigned short": "<u2"}


def read_nrrd(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(array in (x, y, z) order, 4x4 RAS affine) of a 3D NRRD file's bytes."""
    head, sep, body = raw.partition(b"\n\n")
    if not sep or not head.startswith(b"NRRD"):
        raise ValueError("not an NRRD file")
    fields = {}
    for line in head.decode("ascii").splitlines()[1:]:
        if line.startswith("#") or ":" not in line:
            continue
        key, value = line.split(":", 1)
        fields[key.strip()] = value.strip()
    if fields.get("space") != "left-posterior-superior" or fields.get("dimension") != "3":
        raise ValueError(f"unexpected NRRD space/dimension: {fields.get('space')}, {fields.get('dimension')}")
    dtype = np.dtype(TYPES[fields["type"]])
    if fields.get("endian", "little") == "big":
        dtype = dtype.newbyteorder(">")
    data = gzip.decompress(body) if fields["encoding"] == "gzip" else body
    sizes = [int(v) for v in fields["sizes"].split()]
    array = np.frombuffer(data, dtype=dtype, count=int(np.prod(sizes))).reshape(sizes[::-1]).transpose(2, 1, 0)
    directions = [[float(v) for v in d.strip("()").split(",")] for d in fields["space directions"].split()]
    origin = [float(v) for v in fields["space origin"].strip("()").split(",")]
    affine = np.eye(4)
    affine[:3, :3] = np.array(directions).T  # column j: the step of index j
    affine[:3, 3] = origin
    affine[:2] *= -1  # LPS -> RAS
    return array, affine


def download(cache: Path) -> bytes:
    path = cache / "pyradiomics-3.1.0.tar.gz"
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        try:
            with urllib.request.urlopen(URL, timeout=120) as response:  # noqa: S310 (a fixed https URL)
                data = response.read()
        except OSError as exc:  # URLError, timeouts: one line, not a traceback
            raise SystemExit(f"cannot download {URL}: {exc}") from None
        partial = path.with_suffix(".part")
        partial.write_bytes(data)
        partial.replace(path)
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != SHA256:
        raise SystemExit(f"{path}: SHA-256 mismatch; delete it and run again")
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the NIfTI files (outside the repository)")
    p.add_argument("--cases", nargs="+", default=list(CASES))
    p.add_argument("--check-shared", type=Path, default=None,
                   help="the shared folder: convert lung2 too and compare it with the shared copy")
    args = p.parse_args(argv)
    out = args.out.resolve()
    if out == ROOT or ROOT in out.parents:
        print(f"--out {out} is inside the repository; choose a folder outside it", file=sys.stderr)
        return 2
    import nibabel as nib

    archive = tarfile.open(fileobj=io.BytesIO(download(out / ".download")), mode="r:gz")
    names = list(args.cases) + (["lung2"] if args.check_shared else [])
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        for part, dtype in (("image", np.int16), ("label", np.uint8)):
            member = archive.extractfile(f"pyradiomics-3.1.0/data/{name}_{part}.nrrd")
            if member is None:
                raise SystemExit(f"{name}_{part}.nrrd is not in the archive")
            array, affine = read_nrrd(member.read())
            target = out / f"{name}_{part}.nii.gz"
            tmp = out / f".{name}_{part}.tmp.nii.gz"
            nib.save(nib.Nifti1Image(array.astype(dtype), affine), tmp)
            tmp.replace(target)
        label = np.asarray(nib.load(out / f"{name}_label.nii.gz").dataobj)
        print(f"{name}: {array.shape}, tumour voxels {int((label == 1).sum())}, label values {np.unique(label)}")
    if args.check_shared:
        for part in ("image", "label"):
            mine, theirs = nib.load(out / f"lung2_{part}.nii.gz"), nib.load(args.check_shared / f"lung2_{part}.nii.gz")
            same = np.array_equal(np.asarray(mine.dataobj), np.asarray(theirs.dataobj))
            print(f"lung2 {part}: data {'identical' if same else 'DIFFERENT'}, affine "
                  f"{'identical' if np.allclose(mine.affine, theirs.affine) else 'DIFFERENT'} to the shared copy")
        for part in ("image", "label"):
            (out / f"lung2_{part}.nii.gz").unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
