"""One measured task per process (run by bench/run.py): prints one JSON line, ``{"seconds": ..., ...}``.

Each task times only its own work (not the interpreter's start or imports), so the figures of one table compare
the same thing. The parent reads the process's peak RSS from ``wait4``.

    python3 bench/tasks.py sha256 FILE [CHUNK_MIB [OFFSET]]
    python3 bench/tasks.py zlib FILE OUT              # the peers' path: stock zlib level 6, streaming
    python3 bench/tasks.py isal1 FILE OUT             # ocibuild before issue 4: one isal stream, one thread
    python3 bench/tasks.py layer CODEC FILE STORE [--store-blob] [--all-deflate] [--no-plain] [--no-file-digests]
    python3 bench/tasks.py push LAYOUT REF_NAME TARGET   # push_image of a layout's image (plain HTTP loopback)
    python3 bench/tasks.py hash_write FILE OUT HASHES ARRANGEMENT   # the least work of writing a model's layer

Peak RSS is the process's own ``VmHWM`` (``wait4``'s ``ru_maxrss`` would report the parent's RSS at fork, as Linux
carries the high-water mark across exec).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHUNK = 1 << 20


def _chunks(path: str, size: int = CHUNK, offset: int = 0):
    buf = bytearray(size + offset)
    view = memoryview(buf)[offset:]
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            yield view[:n]


def sha256(path: str, chunk_mib: int = 1, offset: int = 0) -> dict:
    """The physical limit of a layer build: one sha256 pass (hashlib = OpenSSL) over the file.

    ``offset`` places the read buffer that many bytes past where the allocator put it. On these machines (AMD
    EPYC) the kernel's copy from the page cache into a page-aligned buffer costs 3-4 times the system time of a
    copy into a buffer 64 bytes off (0.5 s against 0.15 s per GiB): the 4K-aliasing of the copy's source and
    destination. The fastest variant is the limit.
    """
    start = time.perf_counter()
    h = hashlib.sha256()
    for chunk in _chunks(path, chunk_mib << 20, offset):
        h.update(chunk)
    h.hexdigest()
    return {"seconds": time.perf_counter() - start}


def _one_stream(path: str, out: str, compressor) -> dict:
    """A tar-less stand-in for a classic layer writer: read → sha256 (diff_id) → compress → sha256 → file."""
    start = time.perf_counter()
    diff, blob = hashlib.sha256(), hashlib.sha256()
    size = 0
    with open(out, "wb", buffering=CHUNK) as f:
        for chunk in _chunks(path):
            diff.update(chunk)
            packed = compressor.compress(chunk)
            blob.update(packed)
            f.write(packed)
            size += len(packed)
        tail = compressor.flush()
        blob.update(tail)
        f.write(tail)
        size += len(tail)
    return {"seconds": time.perf_counter() - start, "blob_bytes": size}


def zlib6(path: str, out: str) -> dict:
    return _one_stream(path, out, zlib.compressobj(6, zlib.DEFLATED, 31))


def isal1(path: str, out: str) -> dict:
    from isal import isal_zlib

    return _one_stream(path, out, isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31))


def layer(codec: str, path: str, store_dir: str, flags: set[str]) -> dict:
    """ocibuild's layer writer on one model file, as ``package`` calls it for the model layer (with each file's
    sha256 taken in the same read, for the SBOM).

    Flags isolate the directions tried: ``--store-blob`` copies the blob into the store (not derived),
    ``--all-deflate`` deflates every segment (gzip on every core, nothing stored), ``--no-plain`` keeps an
    incompressible layer in gzip (stored deflate blocks) instead of a plain tar, ``--no-file-digests`` writes the
    layer without the files' sha256 (``write_layer``, as before the SBOM).
    """
    from ocibuild.oci import compress
    from ocibuild.oci.layer import LayerContents, write_layer, write_layer_with_file_digests
    from ocibuild.oci.store import BlobStore

    if "--all-deflate" in flags:
        compress.STORE_ABOVE = 2.0
        compress.PLAIN_WHEN_INCOMPRESSIBLE = False
    if "--no-plain" in flags:
        compress.PLAIN_WHEN_INCOMPRESSIBLE = False
    store = BlobStore(store_dir)
    contents = LayerContents()
    contents.add_file(Path(path), f"var/azureml-app/azureml-models/bench/1/{Path(path).name}")
    start = time.perf_counter()
    derive = "--store-blob" not in flags
    if "--no-file-digests" in flags:
        built = write_layer(contents, store, codec, derive=derive)
    else:
        built, _ = write_layer_with_file_digests(contents, store, codec, derive=derive)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "blob_bytes": built.descriptor.size,
        "stored": store.is_stored(built.descriptor.digest),
        "digest": str(built.descriptor.digest),
        "media_type": built.descriptor.media_type,
    }


class _Stages:
    """Threads that each run their steps on every buffer the reader hands them, in order; a buffer goes back to
    ``free`` once the last of them is done with it."""

    def __init__(self, stages: list[list], free) -> None:
        import queue
        import threading

        self.free, self.stages, self.lock = free, stages, threading.Lock()
        self.queues = [queue.Queue(maxsize=8) for _ in stages]
        self.users: dict[int, int] = {}
        self.threads = [
            threading.Thread(target=self._run, args=(q, s)) for q, s in zip(self.queues, stages, strict=True)
        ]
        for t in self.threads:
            t.start()

    def _run(self, q, steps: list) -> None:
        while (item := q.get()) is not None:
            buf, view = item
            for step in steps:
                step(view)
            with self.lock:
                self.users[id(buf)] = self.users.get(id(buf), 0) + 1
                if self.users[id(buf)] == len(self.stages):
                    del self.users[id(buf)]
                    self.free.put(buf)

    def hand(self, buf: bytearray, view: memoryview) -> None:
        for q in self.queues:
            q.put((buf, view))

    def join(self) -> None:
        for q in self.queues:
            q.put(None)
        for t in self.threads:
            t.join()


def hash_write(path: str, out: str, hashes: int, arrangement: str) -> dict:
    """The least work any build of a model into a file must do, without tar, headers or ocibuild: read the file
    once, take ``hashes`` sha256 of its bytes (1: the layer's digest; 2: also the file's own, for an SBOM) and write
    it to ``out``, a new file, with the work spread over threads as ``arrangement`` says:

    ``two``: the reader hashes, one more thread takes the second hash (if any) and writes (ocibuild's pipeline);
    ``three``: the reader only reads, one thread per hash and one writing (every piece of work on its own thread).
    Memory: eight 4 MiB buffers, reused. On two cores the faster arrangement is the floor of a build's model part.
    """
    import queue

    size, shift = 4 << 20, 2048  # half a page off the page cache's alignment: no 4K aliasing (see ``sha256``)
    free: queue.Queue = queue.Queue()
    for _ in range(8):
        free.put(bytearray(size + shift))
    digests = [hashlib.sha256() for _ in range(hashes)]
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    def write(view: memoryview) -> None:
        while view:
            view = view[os.write(fd, view) :]

    if arrangement == "two":
        inline, stages = digests[:1], [[*(h.update for h in digests[1:]), write]]
    else:
        inline, stages = [], [[h.update] for h in digests] + [[write]]
    start = time.perf_counter()
    threads = _Stages(stages, free)
    with open(path, "rb", buffering=0) as f:
        while True:
            buf = free.get()
            view = memoryview(buf)[shift : shift + size]
            n = f.readinto(view)
            if not n:
                break
            for h in inline:
                h.update(view[:n])
            threads.hand(buf, view[:n])
    threads.join()
    for h in digests:
        h.hexdigest()
    os.close(fd)
    return {"seconds": time.perf_counter() - start}


def push(layout: str, ref_name: str, target: str) -> dict:
    """``ocibuild.registry.push.push_image`` of the image ``ref_name`` of an OCI layout to ``target``: what
    ``package --push`` does after its build. The registry is on 127.0.0.1, which ocibuild reaches over plain HTTP
    (loopback), as Docker allows. ``seconds`` covers opening the layout and the push, not the imports."""
    from ocibuild.oci.descriptor import Platform
    from ocibuild.oci.layout import open_layout
    from ocibuild.oci.name import parse_reference
    from ocibuild.registry.push import push_image

    start = time.perf_counter()
    image = open_layout(Path(layout), ref_name, Platform())
    digest = push_image(image, parse_reference(target))
    return {
        "seconds": time.perf_counter() - start,
        "digest": str(digest),
        "image_bytes": sum(d.size for d in {d.digest: d for d in image.descriptors()}.values()),
    }


def vmhwm_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def main(argv: list[str]) -> None:
    task, args = argv[0], argv[1:]
    if task == "sha256":
        result = sha256(args[0], *(int(a) for a in args[1:3]))
    elif task == "zlib":
        result = zlib6(args[0], args[1])
    elif task == "isal1":
        result = isal1(args[0], args[1])
    elif task == "layer":
        result = layer(args[0], args[1], args[2], set(args[3:]))
    elif task == "push":
        result = push(args[0], args[1], args[2])
    elif task == "hash_write":
        result = hash_write(args[0], args[1], int(args[2]), args[3])
    else:
        raise SystemExit(f"unknown task {task}")
    if task != "push":
        result["input_bytes"] = os.path.getsize(args[1] if task == "layer" else args[0])
    result["vmhwm_kb"] = vmhwm_kb()
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
