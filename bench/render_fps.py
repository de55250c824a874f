"""Render speed of the renderers: frames per second at 256 and 512 px, batched.

Two figures per size: render only (controls, warps, mouth and lids, compositing: everything up to
the uint8 frames the encoder gets) and render + encode (the same frames piped into VideoWriter's
H.264 encoder, muxed at the end). Also prepare() time, cold (first photo: FaceMesh graph built) and
warm (new size, landmarks known). Speech is a loud/quiet alternating tone so the mouth works.

With `--replies N`, also N replies rendered at the same time (one thread each, as the service's
workers do): total fps with each reply drawing its own batches, and with SharedBatchRenderer merging
them (what the service uses on CUDA).

    .venv/bin/python -m bench.render_fps [--seconds 8] [--sizes 256 512] [--device cpu] [--frame photo]
        [--replies 4] [--backends warp wav2lip sadtalker] [--wav2lip-checkpoint PATH]
        [--sadtalker-dir DIR] [--random-weights] [--sadtalker-seconds 0.4]

Every backend is built as the service builds it (settings, then load) and driven through its render
session. Neural backends need their checkpoint; `--random-weights` writes a random-valued file in the
official layout (tests/data/checkpoint_layouts/): random weights cost the same compute as real ones,
so the speed is real (the pictures are not). SadTalker draws a whole answer at once (its frames come
out of the session's finish), uses --batch as its own batch and is measured without its CPU length
limit; on a CPU it costs seconds per frame, so give it a short --seconds.

Writes bench/results/render_fps_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.config import load_settings
from pipeline.media.video_output import VideoWriter
from pipeline.render.base import AvatarRenderer, BatchRenderer
from pipeline.render.factory import build_renderer
from pipeline.render.shared_batches import SharedBatchRenderer
from pipeline.render.variants import frame_size
from pipeline.render.warp import WarpRenderer
from pipeline.types import Audio, Speech

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
FPS = 25
SR = 16000


def test_speech(seconds: float) -> Speech:
    """Syllable-like bursts of a harmonic tone (4 per second), with silence between."""
    t = np.arange(round(seconds * SR)) / SR
    tone = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 10))
    envelope = np.clip(np.sin(2 * np.pi * 2 * t), 0, None)
    return Speech("bench", "en", Audio((0.3 * tone * envelope).astype(np.float32), SR))


def build(backend: str, device: str, batch: int, frame: str, checkpoints: dict[str, Path]) -> AvatarRenderer:
    """The renderer as the service builds it (never shared batches here), loaded."""
    if backend == "warp":
        return WarpRenderer(device=device, batch=batch, seed=7, frame=frame)
    env = {
        "TALKTWIN_RENDER__BACKEND": backend,
        "TALKTWIN_RENDER__DEVICE": device,
        "TALKTWIN_RENDER__BATCH": str(batch),
        "TALKTWIN_RENDER__SHARE_BATCHES": "off",
        "TALKTWIN_PATHS__DATA_DIR": tempfile.mkdtemp(prefix="render_fps_"),
    }
    if backend == "sadtalker":
        env["TALKTWIN_RENDER__SADTALKER__BATCH"] = str(batch)
        env["TALKTWIN_RENDER__SADTALKER__MAX_CPU_SECONDS"] = "1e9"
        if backend in checkpoints:
            env["TALKTWIN_RENDER__SADTALKER__CHECKPOINT_DIR"] = str(checkpoints[backend])
    elif backend in checkpoints:
        env[f"TALKTWIN_RENDER__{backend.upper()}__CHECKPOINT"] = str(checkpoints[backend])
    return build_renderer(load_settings(environ=env))


def _frames(renderer: AvatarRenderer, avatar, speech: Speech, n: int):
    session = renderer.session(avatar, fps=FPS)
    yield from session.feed(speech, start_time=0.0, n_frames=n)
    yield from session.finish()


def measure(renderer: AvatarRenderer, size: int, seconds: float, batch: int, photo: bytes) -> dict:
    t0 = time.perf_counter()
    avatar = renderer.prepare(photo, size)
    prepare_s = time.perf_counter() - t0
    speech = test_speech(seconds)
    n = round(seconds * FPS)
    gpu = renderer.capabilities.gpu
    warm = min(n, batch) if renderer.capabilities.whole_utterance else 2 * batch
    for _ in _frames(renderer, avatar, speech, warm):
        pass  # warm-up: allocator, kernels
    if gpu:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _frames_batch in _frames(renderer, avatar, speech, n):
        pass
    render_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        width, height = frame_size(avatar)
        writer = VideoWriter(Path(tmp) / "bench.mp4", width, FPS, height=height)
        for frames in _frames(renderer, avatar, speech, n):
            writer.write(frames)
        writer.finish(speech.audio)
        total_s = time.perf_counter() - t0
    return {
        "backend": renderer.name,
        "size": size,
        "frame": f"{getattr(avatar, 'frame', 'square')} {avatar.width}x{avatar.height}",
        "batch": batch,
        "frames": n,
        "prepare_s": round(prepare_s, 3),
        "render_fps": round(n / render_s, 1),
        "render_s_per_frame": round(render_s / n, 2),
        "render_encode_fps": round(n / total_s, 1),
        "realtime_x_render_encode": round(n / total_s / FPS, 2),
    }


def measure_replies(
    inner: BatchRenderer, size: int, seconds: float, batch: int, photo: bytes, replies: int
) -> dict:
    """Total render fps of `replies` concurrent replies (same photo), separate vs shared batches."""
    avatar = inner.prepare(photo, size)
    speech, n = test_speech(seconds), round(seconds * FPS)

    def run_all(renderer) -> float:
        start = threading.Barrier(replies + 1)

        def reply() -> None:
            start.wait()
            for _frames_batch in _frames(renderer, avatar, speech, n):
                pass

        threads = [threading.Thread(target=reply) for _ in range(replies)]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        if inner.capabilities.gpu:
            torch.cuda.synchronize()
        return replies * n / (time.perf_counter() - t0)

    shared = SharedBatchRenderer(inner, max_batch=4 * batch)
    run_all(shared)  # warm-up
    separate_fps, shared_fps = run_all(inner), run_all(shared)
    stats = shared.stats
    shared.close()
    return {
        "backend": inner.name,
        "size": size,
        "replies": replies,
        "batch": batch,
        "separate_fps": round(separate_fps, 1),
        "shared_fps": round(shared_fps, 1),
        "chunks_per_draw": round(stats.chunks / max(1, stats.draws), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument(
        "--sadtalker-seconds",
        type=float,
        default=0.4,
        help="SadTalker's answer length (it costs seconds per frame on a CPU)",
    )
    parser.add_argument("--sizes", type=int, nargs="*", default=[256, 512])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--photo", type=Path, default=ROOT / "assets" / "avatar.jpg")
    parser.add_argument("--frame", choices=["square", "photo"], default="square")
    parser.add_argument("--replies", type=int, default=0, help="also measure N concurrent replies")
    parser.add_argument("--backends", nargs="*", default=["warp"])
    parser.add_argument("--wav2lip-checkpoint", type=Path, default=None)
    parser.add_argument("--sadtalker-dir", type=Path, default=None, help="SadTalker's checkpoint_dir")
    parser.add_argument(
        "--random-weights", action="store_true", help="random checkpoints in the official layout"
    )
    args = parser.parse_args()
    photo = args.photo.read_bytes()
    t0 = time.perf_counter()
    WarpRenderer(device=args.device).prepare(photo, 256)
    cold = time.perf_counter() - t0
    checkpoints = {"wav2lip": args.wav2lip_checkpoint} if args.wav2lip_checkpoint else {}
    if args.random_weights and "wav2lip" in args.backends and "wav2lip" not in checkpoints:
        checkpoints["wav2lip"] = random_checkpoint("wav2lip_gan.json")
    if args.sadtalker_dir:
        checkpoints["sadtalker"] = args.sadtalker_dir
    elif args.random_weights and "sadtalker" in args.backends:
        from tests.test_sadtalker import write_random_sadtalker_dir

        checkpoints["sadtalker"] = write_random_sadtalker_dir(
            Path(tempfile.mkdtemp(prefix="random_sadtalker_"))
        )
    renderers = [build(b, args.device, args.batch, args.frame, checkpoints) for b in args.backends]

    def seconds(renderer: AvatarRenderer) -> float:
        return args.sadtalker_seconds if renderer.name == "sadtalker" else args.seconds

    rows = [measure(r, size, seconds(r), args.batch, photo) for r in renderers for size in args.sizes]
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"{os.cpu_count()} CPU cores"
    result = {
        "device": device,
        "machine": platform.machine(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "prepare_cold_s": round(cold, 3),
        "sizes": rows,
    }
    if args.replies:
        result["concurrent"] = [
            measure_replies(r, size, args.seconds, args.batch, photo, args.replies)  # type: ignore[arg-type]
            for r in renderers
            if r.capabilities.batchable
            for size in args.sizes
        ]
        for r in result["concurrent"]:
            print(
                f"{r['backend']} {r['size']} px, {r['replies']} replies at once: "
                f"{r['separate_fps']} fps drawing separately, {r['shared_fps']} fps in shared batches "
                f"({r['chunks_per_draw']} chunks/draw)"
            )
    for r in rows:
        print(
            f"{r['backend']} {r['size']} px ({r['frame']}) batch {r['batch']}: render {r['render_fps']} fps, "
            f"render+encode {r['render_encode_fps']} fps ({r['render_s_per_frame']} s/frame), "
            f"prepare {r['prepare_s']} s"
        )
    print(f"prepare (cold, first photo): {cold:.2f} s on {device}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = ("cuda" if args.device == "cuda" else "cpu") + ("" if args.frame == "square" else f"_{args.frame}")
    (RESULTS / f"render_fps_{name}.json").write_text(json.dumps(result, indent=2) + "\n")


def random_checkpoint(manifest: str) -> Path:
    """A random-valued file in the official container, from the layout in tests/data/checkpoint_layouts."""
    from tests.checkpoint_files import load_layout, write_random_checkpoint

    out = Path(tempfile.mkdtemp(prefix="random_ckpt_")) / manifest.replace(".json", ".pth")
    return write_random_checkpoint(load_layout(manifest), out)


if __name__ == "__main__":
    main()
