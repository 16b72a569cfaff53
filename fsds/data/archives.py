"""The public datasets' archives: where each one lives and how to recognise it.

``ARCHIVES`` is the only place in the project that holds URLs, sizes and checksums;
:mod:`fsds.data.download` fetches and verifies an archive, :mod:`fsds.data.extract` unpacks it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import urlsplit

CHUNK = 1 << 20  # bytes read at a time from a download, a file or an archive member


class DownloadError(RuntimeError):
    """An archive could not be fetched, verified or read."""


@dataclass(frozen=True)
class Archive:
    name: str  # file name: the URL's last path part, or what the server names the file
    url: str
    size: int | None = None  # bytes; None where the publisher's bytes are not stable/known
    sha256: str | None = None


def _entry(
    url: str, size: int | None = None, sha256: str | None = None, name: str | None = None
) -> Archive:
    return Archive(name or PurePosixPath(urlsplit(url).path).name, url, size, sha256)


# MVTec AD. URLs: the links of https://www.mvtec.com/company/research/datasets/mvtec-ad/downloads
# as used in 2026 by several maintained projects (one cites anomalib's main branch). MVTec
# rotates the mydrive.ch share part of its links: the older 38536/...f282 and .../f283 shares
# answer 404 (anomalib issues #3121 and #3608, fixed by PRs #3138 and #3673), while the file
# ids (e.g. 420937370-1629958698) and the bytes stay the same. If a link dies, take the
# current one from that page or from anomalib's MVTecAD datamodule.
# Full archive: sha256 as pinned by anomalib (DOWNLOAD_INFO in src/anomalib/data/datamodules/
# image/mvtecad.py); size 5,264,982,680 bytes as reported by two independent projects whose
# archive had that same sha256.
# Categories: sha256 of all 15 from a 2020 TensorFlow loader (archives then on MVTec's FTP);
# for bottle, grid, metal_nut, screw and zipper a 2026 fetcher against the links below pins
# the same sha256 plus the sizes used here. No published size was found for the other ten.
_MVTEC_HOST = "https://www.mydrive.ch/shares/"
_MVTEC_FULL = _entry(
    _MVTEC_HOST + "150996/b52ecdcbf521176e9db9c731f2304b27/download/420938113-1629960298/"
    "mvtec_anomaly_detection.tar.xz",
    5_264_982_680,
    "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
)
_MVTEC_SHARES = {  # <share>/download/<file id>, then /<category>.tar.xz
    "bottle": "150452/132a93367fb17cdf968dfb5c4013f6e7/download/420937370-1629958698",
    "cable": "150453/10f960e07fec2838b2cd512586633a32/download/420937413-1629958794",
    "capsule": "150454/e0ce6dd74eb150f46c0d98131b3703f2/download/420937454-1629958872",
    "carpet": "150455/eac7fbce84d93a5094e13f391170eca4/download/420937484-1629959013",
    "grid": "150456/bb0b2e3dc804ccb8b4485e01f8e4493b/download/420937487-1629959044",
    "hazelnut": "150457/51d49f65e84bdc100ff8035d7dd783ea/download/420937545-1629959162",
    "leather": "150458/923030ce14e10a7d147e95d0f8885f6b/download/420937607-1629959262",
    "metal_nut": "150459/c68856a21dca589b0f8ff6d4ee0f18f4/download/420937637-1629959294",
    "pill": "150460/d4f1c04da67034ccc8d8b5fa3e73f244/download/420938129-1629960351",
    "screw": "150461/242f454cc6385e5693c4fd4b94567d1e/download/420938130-1629960389",
    "tile": "150462/5479f0fdc97bc6fa16eab0cb0cf0109f/download/420938133-1629960456",
    "toothbrush": "150463/895a1a5fb84b958f07417784b060434b/download/420938134-1629960477",
    "transistor": "150464/99b8ea0332438d64fcc2475ee73f9c29/download/420938166-1629960554",
    "wood": "150465/d5b4115b720cdb54d217e75636e6e374/download/420938383-1629960649",
    "zipper": "150466/bd155b557520edaf692d9bfdb915c24a/download/420938385-1629960680",
}
_MVTEC_SHA256 = {
    "bottle": "726512129cb3b1f47d4f6cd7c7fc9170db7fc209132249c788fec06029cb5dc3",
    "cable": "1e3d59b80a6a8da5adf32fb0cf311c7b964cde146d6920aef9ca66380999a9cd",
    "capsule": "f6a41cb11f1589d552888fe9c43a1adcbcae15b70073e19093322f836d00a2b6",
    "carpet": "d9dd5064515a20bd75cf24d223c570579141abd72388beef892780b74dbaa85d",
    "grid": "d94a9a651cbfaee22c94d06cf8fa8204a590c872362de0489eb34f1645328de8",
    "hazelnut": "a7f4e7d65a60a235def7236a46fcb854d62e6c6917c16b1ec9cb4ff089d3b0da",
    "leather": "704ffa48b1dc2fc44824aa50442d9febc399dd92a5d6fd8156f8aa0373d15f24",
    "metal_nut": "86e3c8e163ceb19146ad3ddc408e85cc34ae02e0da430e07a73bac6bbb48532a",
    "pill": "ac6ce9ec4ec2a5d67c906d82147bd7431980cf00b78f25d63201a5f17e3a2038",
    "screw": "0a27a365a21e472d19b9fb48cb8e4002b49fabe083bff7f4c16fa57d78154f10",
    "tile": "392228153b96d0db9f179d3f7c2d63e131e907154883b57309fcbf798643173c",
    "toothbrush": "fe72a34b4b0d074f84e844be7ef8c4f64f7f02f20e25f19c9e3b4a231c8bea77",
    "transistor": "146b2166c35a1d0cf37ded091366ac01a50338b4ac704632f1239890eaca4449",
    "wood": "3757297ac2a266072eb4f25a97f805f5b37fd583492b20bd709f310736c1ea47",
    "zipper": "7ab46e0e195da145db30052baea3d3a5d14c5f0e710137c968e0423f02cb942d",
}
_MVTEC_SIZES = {
    "bottle": 155_880_244,
    "grid": 160_763_852,
    "metal_nut": 165_414_484,
    "screw": 195_344_332,
    "zipper": 159_484_784,
}
MVTEC_CATEGORIES: tuple[str, ...] = tuple(_MVTEC_SHARES)

ARCHIVES: dict[str, Archive] = {
    "mvtec": _MVTEC_FULL,
    **{
        f"mvtec/{c}": _entry(
            f"{_MVTEC_HOST}{share}/{c}.tar.xz", _MVTEC_SIZES.get(c), _MVTEC_SHA256[c]
        )
        for c, share in _MVTEC_SHARES.items()
    },
    # GitHub builds this zip on the fly, so its bytes (and hash) are not stable: the
    # content is validated by file counts when the dataset is indexed instead. The URL ends
    # in master.zip but GitHub names the file <repo>-<branch>.zip (Content-Disposition),
    # which is the name people find in their browser's downloads and put in a mirror.
    "magnetic_tile": _entry(
        "https://github.com/abin24/Magnetic-tile-defect-datasets./archive/refs/heads/master.zip",
        name="Magnetic-tile-defect-datasets.-master.zip",
    ),
}
