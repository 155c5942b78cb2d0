"""Shared by the reference scripts: skip regeneration when the outputs were made by the same script text."""
import hashlib
import os
import sys


def up_to_date(outdir: str, script: str) -> bool:
    """True when outdir holds a complete set made by this exact script; otherwise prepares outdir."""
    stamp = os.path.join(outdir, "STAMP")
    digest = hashlib.sha256(open(script, "rb").read()).hexdigest()
    if os.path.exists(stamp) and open(stamp).read().strip() == digest:
        return True
    os.makedirs(outdir, exist_ok=True)
    if os.path.exists(stamp):
        os.remove(stamp)
    return False


def mark_done(outdir: str, script: str) -> None:
    digest = hashlib.sha256(open(script, "rb").read()).hexdigest()
    with open(os.path.join(outdir, "STAMP"), "w") as f:
        f.write(digest + "\n")


def outdir_from_argv() -> str:
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUTDIR")
    return sys.argv[1]
