"""One tarball of a GPU session's folder, under a size limit.

    python -m benchmarks.pack DIR TARBALL [--max-mb 16]

The device tool brings back at most 8 files of at most 16 MiB each, so a session leaves
its logs and results as one gzipped tarball holding DIR as `<name of DIR>/...`. Should it come
out larger than the limit (a suite that fails everywhere writes long logs), the largest
files are cut, logs first, one at a time until it fits: a text file keeps its first and last
lines around a note of what was cut, any other file is left out. `<name>/CUT.txt` lists what
was cut. Prints one line: files, size, and what was cut.
"""
import argparse
import io
import sys
import tarfile
import time
from pathlib import Path

MIB = 2**20
TEXT_SUFFIXES = {".log", ".txt", ".md", ".json", ".jsonl", ".tsv", ".csv"}
HEAD_BYTES, TAIL_BYTES = 64 * 1024, 192 * 1024


def _cut_text(data: bytes) -> bytes:
    """The first and last lines of `data`, with the size of what was left out between them."""
    head = data[:HEAD_BYTES].rsplit(b"\n", 1)[0]
    tail = data[-TAIL_BYTES:].split(b"\n", 1)[-1]
    note = f"\n[... {len(data) - len(head) - len(tail)} bytes cut by benchmarks.pack to fit the size limit ...]\n"
    return head + note.encode() + tail


def _tarball(root: str, files: dict) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(f"{root}/{name}")
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _cut_order(name: str, data: bytes) -> tuple:
    """Logs before results, then the largest first."""
    return (not name.endswith(".log"), -len(data))


def pack(folder: Path, tarball: Path, max_bytes: int) -> list[str]:
    """Write `tarball` from `folder`; returns what was cut to keep it within max_bytes."""
    files = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    cut, done = [], set()
    packed = _tarball(folder.name, files)
    while len(packed) > max_bytes:
        candidates = sorted((name for name in files if name not in done), key=lambda n: _cut_order(n, files[n]))
        if not candidates:
            raise RuntimeError(f"{folder} does not fit in {max_bytes} bytes even with every file cut")
        name = candidates[0]
        done.add(name)
        if Path(name).suffix in TEXT_SUFFIXES and len(files[name]) > HEAD_BYTES + TAIL_BYTES:
            files[name] = _cut_text(files[name])
            cut.append(f"{name}: kept its first {HEAD_BYTES // 1024} KiB and last {TAIL_BYTES // 1024} KiB")
        else:
            del files[name]
            cut.append(f"{name}: left out ({len(packed)} bytes packed with it)")
        files["CUT.txt"] = ("\n".join(cut) + "\n").encode()
        packed = _tarball(folder.name, files)
    tarball.write_bytes(packed)
    return cut


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("tarball", type=Path)
    parser.add_argument("--max-mb", type=float, default=16.0, help="size limit in MiB (default 16)")
    args = parser.parse_args(argv)
    cut = pack(args.folder, args.tarball, int(args.max_mb * MIB))
    count = sum(1 for p in args.folder.rglob("*") if p.is_file())
    print(f"packed {count} files of {args.folder} into {args.tarball} ({args.tarball.stat().st_size / MIB:.2f} MiB)"
          + (f"; cut to fit {args.max_mb:g} MiB: " + "; ".join(cut) if cut else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
