"""Live conversations over WebRTC (`POST /v1/live`): where the sessions run, and the HTTP side.

Design decision: a live session runs where the models are.

- Models in this process (`reply.models_process = false`, or `Components(pipeline=...)`): the hub
  (bots/live/hub.py) runs here, on a loop thread of its own beside the HTTP server's.
- Models in their own process (embedded mode's default, bots/core/model_process.py): the WebRTC peer
  connection runs *inside the models' process* (option B of issue 13). Only signalling crosses the
  pipe: the service forwards the browser's SDP offer ("live_offer"), the child answers it with its
  own ICE candidates, and from then on audio, video and the events channel flow directly between the
  browser and the child over UDP. The conversation's frames, speech and microphone audio never cross
  the pipe (at 25 fps that would be ~5 MB/s of raw frames at 256 px), and a native crash in a model
  ends the live sessions with the child, never the service: the client sees the connection fail and
  may call again (a fresh child answers). The other option (A: live only with the models in the
  service's process, 503 otherwise) would have made the safer default mode unable to talk live.
- Queue mode (models on Celery workers): no models here or in a child: /v1/live answers 503.

Memory: the child's pipeline has its own MemoryStore on the same database, so a live turn is
recorded in the user's conversation ("http:<id>") exactly as their /v1/reply turns are; knowledge
search goes over the pipe to the service as for replies.

CPU sharing with the bots' replies: live first. A live session's threads (listening, Whisper + the
model + TTS, drawing at 25 fps, WebRTC) run at the process's normal priority, the threads that make
replies at `reply.nice` (10) below it, and what those start inherits it (bots/core/priority.py): when
both want the cores the scheduler gives them to the live session, and replies take all of them when
it is idle. Whisper and the chat model's server serve one call at a time, in arrival order: a live
question waits at most for a reply's recognition or answer in progress. `[live] max_sessions`
(default 1) bounds what live conversations can take; the reply queue's "busy, try again" bounds the
bots' side. See docs/live.md.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import threading
from typing import Any

from memory.keys import user_key

MAX_OFFER_BYTES = 100_000  # a browser's offer is a few kB
_local_hubs: dict[int, Any] = {}
_lock = threading.Lock()


def hub_for(pipeline: Any) -> Any:
    """The hub of live sessions over `pipeline` in this process (made on first use)."""
    from bots.live.hub import LiveHub

    with _lock:
        hub = _local_hubs.get(id(pipeline))
        if hub is None or hub.pipeline is not pipeline:
            hub = LiveHub(pipeline)
            _local_hubs[id(pipeline)] = hub
            atexit.register(hub.close)
        return hub


def close_hub(pipeline: Any) -> None:
    """End every live session over `pipeline` and stop its hub (blocking)."""
    with _lock:
        hub = _local_hubs.pop(id(pipeline), None)
    if hub is not None:
        hub.close()


def child_offer(pipeline: Any, request: str) -> str:
    """In the models' process: answer an offer forwarded over the pipe; JSON {"status", "body"}."""
    data = json.loads(request)
    status, body = hub_for(pipeline).offer(data["offer"], data.get("lang", "en"))
    return json.dumps({"status": status, "body": body})


async def answer_offer(components: Any, raw: bytes, lang: str, user_id_pattern: Any) -> tuple[int, dict]:
    """The HTTP side of POST /v1/live: validate, then have the models' side answer the offer."""
    if len(raw) > MAX_OFFER_BYTES:
        return 413, {"error": "too_large", "message": f"an SDP offer is at most {MAX_OFFER_BYTES} bytes"}
    try:
        request = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return 400, {"error": "bad_json", "message": 'expected JSON {"sdp", "type": "offer", "user"}'}
    if not isinstance(request, dict):
        return 400, {"error": "bad_json", "message": 'expected a JSON object {"sdp", "type", "user"}'}
    user = request.get("user")
    if not isinstance(user, str) or not user_id_pattern.fullmatch(user):
        return 422, {"error": "bad_user", "message": "user ids are 1-64 letters, digits, '_' or '-'"}
    offer = {"sdp": request.get("sdp"), "type": request.get("type"), "user": user_key("http", user)}
    settings = getattr(components, "settings", None)
    if settings is not None and not settings.live.enabled:
        return 503, {"error": "live_off", "message": "live conversations are switched off ([live] enabled)"}
    if components.pipeline is not None:
        return await asyncio.to_thread(hub_for(components.pipeline).offer, offer, lang)
    live_offer = getattr(components.executor, "live_offer", None)
    if live_offer is None:
        return 503, {
            "error": "live_unavailable",
            "message": "live conversations need the models in this service or its models' process "
            "(not queue mode)",
        }
    from pipeline.errors import WorkerCrashed

    try:
        answer = await asyncio.to_thread(live_offer, json.dumps({"offer": offer, "lang": lang}))
    except WorkerCrashed:
        return 503, {"error": "worker_crashed", "message": "the models' process is restarting; try again"}
    value = json.loads(answer)
    return value["status"], value["body"]
