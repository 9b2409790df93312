"""Image ingest and download through the API, against the machine's own hashing speed.

Usage: ``.venv/bin/python bench/image_ingest.py [--small]``

* Ingest: a 1 GiB raw image (``--small``: 128 MiB) is streamed to ``PUT …/file`` of a real
  ``sovra server`` process; the clock runs from the first byte sent to the 202 answer, which comes
  only after the server has hashed, inspected and stored every byte. Baseline, same run:
  ``openssl dgst -sha256`` of the same file (the physical limit here: every byte must be hashed).
  Target: ingest speed / openssl speed >= 0.6.
* Download: ``GET …/file`` of the same version, streamed to nowhere, against reading the stored
  blob with plain Python (what the disk gives).
* Memory: the server's peak RSS during an upload and a download of the small and the large image;
  streaming means the peak does not grow with the image.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from _common import (
    VENV_BIN,
    Report,
    children,
    free_port,
    log,
    parse_args,
    ratio,
    wait_http_ok,
)

MiB = 1024 * 1024
METADATA = {
    "architecture": "x86_64",
    "min_disk": 1,
    "min_ram": 128,
    "os_distro": "bench",
    "os_version": "1",
    "replace_frequency": "never",
    "provided_until": "none",
    "image_source": "private",
    "image_description": "benchmark",
    "image_build_date": "2026-11-23",
    "image_original_user": "root",
}


def make_image(path: Path, size: int) -> None:
    """Random-looking bytes (hashing cost does not depend on content, but nothing is sparse)."""
    block = os.urandom(MiB)
    with path.open("wb") as handle:
        for index in range(size // MiB):
            handle.write(block[index % 251 :] + block[: index % 251])


def openssl_seconds(path: Path) -> float:
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        subprocess.run(["openssl", "dgst", "-sha256", str(path)], check=True, capture_output=True)
        best = min(best, time.perf_counter() - started)
    return best


def read_seconds(path: Path) -> float:
    started = time.perf_counter()
    with path.open("rb") as handle:
        while handle.read(MiB):
            pass
    return time.perf_counter() - started


class RssSampler:
    """Peak resident memory of a process while a block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> RssSampler:
        self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(MiB):
            yield chunk


def new_version(client: httpx.Client, image_id: str, name: str) -> dict[str, object]:
    body = {
        "version": name,
        "metadata": METADATA,
        "disk_format": "raw",
        "boot_test": {"enabled": False},
        "source": {"type": "upload", "declared_format": "raw"},
    }
    response = client.post(f"/v1/images/{image_id}/versions", json=body)
    response.raise_for_status()
    version: dict[str, object] = response.json()
    return version


def upload(client: httpx.Client, image_id: str, name: str, path: Path, pid: int) -> tuple[float, int]:
    version = new_version(client, image_id, name)
    with RssSampler(pid) as rss:
        started = time.perf_counter()
        response = client.put(
            f"/v1/images/{image_id}/versions/{version['id']}/file",
            content=chunks(path),
            headers={"content-type": "application/octet-stream"},
        )
        elapsed = time.perf_counter() - started
    response.raise_for_status()
    operation = response.json()["id"]
    deadline = time.monotonic() + 600
    while client.get(f"/v1/operations/{operation}").json()["state"] not in ("SUCCEEDED", "FAILED"):
        if time.monotonic() > deadline:
            raise TimeoutError("the prepare operation did not finish")
        time.sleep(0.2)
    return elapsed, rss.peak


def download(client: httpx.Client, image_id: str, version_id: str, pid: int) -> tuple[float, int, int]:
    received = 0
    with RssSampler(pid) as rss:
        started = time.perf_counter()
        with client.stream("GET", f"/v1/images/{image_id}/versions/{version_id}/file") as response:
            response.raise_for_status()
            for chunk in response.iter_raw(MiB):
                received += len(chunk)
        elapsed = time.perf_counter() - started
    return elapsed, rss.peak, received


def main() -> int:
    args = parse_args(__doc__ or "")
    large = (128 if args.small else 1024) * MiB
    small = (32 if args.small else 256) * MiB
    report = Report("image ingest and download through the API")
    with tempfile.TemporaryDirectory(prefix="sovra-bench-") as scratch, children() as spawn:
        root = Path(scratch)
        token = secrets.token_urlsafe(16)
        port = free_port()
        env = {"SOVRA_DATA_DIR": str(root / "data"), "SOVRA_ADMIN_TOKEN": token, "SOVRA_API_PORT": str(port)}
        server = spawn("server", [str(VENV_BIN / "sovra"), "api"], env=env, log_dir=root)
        worker = spawn("worker", [str(VENV_BIN / "sovra"), "worker"], env=env, log_dir=root)
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{url}/readyz", server)
        worker.check_alive()
        images = {}
        for size in (small, large):
            log(f"writing a {size // MiB} MiB image")
            images[size] = root / f"image-{size // MiB}.raw"
            make_image(images[size], size)
        log("baseline: openssl dgst -sha256")
        openssl = openssl_seconds(images[large])
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, headers=headers, timeout=600) as client:
            project = client.post("/v1/projects", json={"name": "bench"}).json()["id"]
            image = client.post(f"/v1/projects/{project}/images", json={"name": "bench"}).json()["id"]
            log("ingest")
            _, small_up_rss = upload(client, image, "small", images[small], server.process.pid)
            large_up, large_up_rss = upload(client, image, "large", images[large], server.process.pid)
            versions = {
                v["spec"]["version"]: v for v in client.get(f"/v1/images/{image}/versions").json()["items"]
            }
            log("download")
            _, small_down_rss, _ = download(client, image, versions["small"]["id"], server.process.pid)
            large_down, large_down_rss, got = download(
                client, image, versions["large"]["id"], server.process.pid
            )
        blob = root / "data" / "blobs" / "sha256"
        stored = next(p for p in blob.rglob("*") if p.is_file() and p.stat().st_size == large)
        disk_read = read_seconds(stored)
    gib = large / 1024**3
    ingest_ratio = ratio(openssl, large_up)
    report.section(f"ingest of {large // MiB} MiB through PUT …/file (hash + inspect + store)")
    report.figure("openssl dgst -sha256 (baseline)", f"{openssl:.2f} s  ({gib / openssl * 1024:.0f} MiB/s)")
    report.figure("sovra ingest", f"{large_up:.2f} s  ({gib / large_up * 1024:.0f} MiB/s)")
    report.figure("ratio ingest speed / openssl speed", f"{ingest_ratio:.2f}  (target >= 0.6)")
    report.section(f"download of {large // MiB} MiB through GET …/file")
    report.figure(
        "reading the stored blob (baseline)", f"{disk_read:.2f} s  ({gib / disk_read * 1024:.0f} MiB/s)"
    )
    report.figure("sovra download", f"{large_down:.2f} s  ({gib / large_down * 1024:.0f} MiB/s)")
    report.figure("ratio download speed / disk read speed", f"{ratio(disk_read, large_down):.2f}")
    report.figure("bytes received", f"{got} of {large}")
    report.section("server peak RSS: streaming, not buffering")
    for label, (small_rss, large_rss) in (
        ("upload", (small_up_rss, large_up_rss)),
        ("download", (small_down_rss, large_down_rss)),
    ):
        report.figure(
            f"{label} of {small // MiB} MiB / {large // MiB} MiB",
            f"{small_rss / MiB:.0f} MiB / {large_rss / MiB:.0f} MiB  "
            f"(growth {ratio(large_rss, small_rss):.2f}x for {large // small}x the bytes)",
        )
    report.print()
    flat = large_up_rss < small_up_rss + 64 * MiB and large_down_rss < small_down_rss + 64 * MiB
    return report.finish(
        ingest_ratio >= 0.6 and flat,
        f"ingest at {ingest_ratio:.2f}x openssl sha256; RSS {'flat' if flat else 'GROWS'} with size",
    )


if __name__ == "__main__":
    raise SystemExit(main())
