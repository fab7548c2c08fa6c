"""Vendor the docs pages' viewers from the npm registry into service/api/docs_assets/, replacing what is there.

    python scripts/vendor_docs_assets.py SWAGGER_UI_VERSION REDOC_VERSION     (e.g. 5.35.0 2.5.4)

Exact versions only. Each package's files are copied as released, with its licence and its package.json (which
names the version: the service serves the files under it, so browsers never keep an old copy). Needs `npm`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

DOCS_ASSETS = Path(__file__).resolve().parent.parent / "service" / "api" / "docs_assets"

# What each page loads, with the licence texts that come with it; paths inside the npm package.
FILES = {
    "swagger-ui-dist": [
        "LICENSE", "NOTICE", "package.json",
        "swagger-ui-bundle.js", "swagger-ui-bundle.js.LICENSE.txt",
        "swagger-ui-standalone-preset.js", "swagger-ui-standalone-preset.js.LICENSE.txt",
        "swagger-ui.css",
    ],
    "redoc": [
        "LICENSE", "package.json",
        "bundles/redoc.standalone.js", "bundles/redoc.standalone.js.LICENSE.txt",
        "bundles/*.worker.js.LICENSE.txt",  # the search worker the standalone bundle carries inside it
    ],
}
EXACT_VERSION = re.compile(r"\d+\.\d+\.\d+")


def vendor(package: str, version: str, workdir: Path) -> None:
    """Fetch `package@version` with `npm pack` and put its FILES in DOCS_ASSETS/package/, flat."""
    subprocess.run(["npm", "pack", "--silent", f"{package}@{version}", "--pack-destination", str(workdir)],
                   check=True, stdout=subprocess.DEVNULL)
    with tarfile.open(workdir / f"{package}-{version}.tgz") as tarball:
        tarball.extractall(workdir / package, filter="data")
    unpacked = workdir / package / "package"
    released = json.loads((unpacked / "package.json").read_text())
    if released["version"] != version:
        sys.exit(f"{package}: asked for {version}, npm gave {released['version']}")
    target = DOCS_ASSETS / package
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for pattern in FILES[package]:
        matches = sorted(unpacked.glob(pattern))
        if not matches:
            sys.exit(f"{package}@{version} has no {pattern}")
        for path in matches:
            shutil.copyfile(path, target / path.name)
    print(f"{package}@{version} ({released['license']}) -> {target.relative_to(Path.cwd())}")


def main() -> None:
    versions = sys.argv[1:]
    if len(versions) != 2 or not all(EXACT_VERSION.fullmatch(version) for version in versions):
        sys.exit(__doc__)
    with tempfile.TemporaryDirectory() as workdir:
        for package, version in zip(FILES, versions, strict=True):
            vendor(package, version, Path(workdir))


if __name__ == "__main__":
    main()
