"""LiveHub: the live sessions of the process that holds the models, over aiortc.

It answers a WebRTC offer (`offer`, blocking and thread-safe: called from the HTTP handler's worker
thread, or from the models' process's pipe reader) and then owns the session: the peer connection,
the pacer that sends the avatar's frames and voice, the task that feeds the microphone to the
conversation, and a watchdog for the limits. Everything asynchronous runs on the hub's own event
loop, in a thread of its own, so the same code serves both places the models can live
(bots/live/__init__.py says which).

Limits (`[live]`): at most `max_sessions` at once (one more is told "busy, try again in N s", N
being when the first running session must end at the latest); a session ends after
`idle_timeout_s` without the user speaking, after `max_session_s` in all, when the client hangs up
(connection closed or failed), or when its microphone stops sending for STALL_S (a client that
vanished without a word: no goodbye reaches us, ICE's consent checks would take ~30 s). An offer the
client sends no audio in (video or a data channel only, audio "recvonly" or "inactive") is refused
at once, 400 no_audio: nothing could be heard, and it would hold a slot until the idle timeout.
The no_audio and busy refusals are said in the request's language (Accept-Language: English or
Chinese); a malformed SDP's 400 names the problem in English (a developer's error, not a browser's).

Ending a session stops its tasks, closes the peer connection (aiortc stops its decoder threads) and
closes the conversation (its three threads are joined; an answer being spoken is recorded as cut off).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import aioice.ice
import av
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from bots.live.tracks import Pacer, QueueTrack
from pipeline.errors import InternalFailure, TalkTwinError
from pipeline.live.conversation import LiveConversation
from pipeline.live.options import LiveOptions
from pipeline.live.vad import RATE as MIC_RATE

log = logging.getLogger(__name__)

OFFER_TIMEOUT_S = 60  # answering an offer: the avatar is prepared, ICE candidates gathered
FIRST_AUDIO_S = 30  # from the answer to the first microphone frame (ICE and DTLS on a slow network)
STALL_S = 10  # no microphone frame for this long: the client is gone (browsers send silence too)
MESSAGES = {
    "idle_timeout": {
        "en": "The live conversation ended: nobody spoke for {seconds:.0f} s.",
        "zh": "实时对话已结束：{seconds:.0f} 秒内没有人说话。",
    },
    "max_length": {
        "en": "The live conversation reached its longest length ({seconds:.0f} s) and ended.",
        "zh": "实时对话已达到最长时长（{seconds:.0f} 秒），已结束。",
    },
    # refusals of an offer (HTTP 400 and 429 bodies), shown as they are by the page
    "no_audio": {
        "en": "The call sends no microphone audio: a live conversation needs a microphone. "
        "Plug one in, allow this page to use it and call again.",
        "zh": "这次通话没有麦克风声音：实时对话需要麦克风。请接上麦克风、允许本页使用后再试。",
    },
    "busy": {
        "en": "busy, try again in {seconds} s",
        "zh": "实时对话正忙，请 {seconds} 秒后再试。",
    },
}


def _host_addresses_or_loopback(get: Any) -> Any:
    """aioice never offers loopback candidates; on a machine whose only interface is loopback (a
    sandbox, a container without a network) that leaves none, and no call could connect."""

    def addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        found = get(use_ipv4, use_ipv6)
        return found or (["127.0.0.1"] if use_ipv4 else [])

    return addresses


if not getattr(aioice.ice.get_host_addresses, "talktwin", False):
    aioice.ice.get_host_addresses = _host_addresses_or_loopback(aioice.ice.get_host_addresses)
    aioice.ice.get_host_addresses.talktwin = True  # type: ignore[attr-defined]


def sdp_problem(sdp: str) -> str:
    """What makes `sdp` unusable as an offer ("" when nothing obvious does): aiortc's parser accepts
    almost any text, and a session without ICE credentials or a DTLS fingerprint only fails later."""
    lines = [line.strip() for line in sdp.strip().splitlines() if line.strip()]
    if not lines or lines[0] != "v=0":
        return "it must start with v=0"
    bad = next((line for line in lines if len(line) < 2 or line[1] != "=" or not line[0].isalpha()), None)
    if bad is not None:
        return f"not an SDP line: {bad[:40]!r}"
    if not any(line.startswith("m=") for line in lines):
        return "it has no media section (m=)"
    for needed in ("a=ice-ufrag:", "a=ice-pwd:", "a=fingerprint:"):
        if not any(line.startswith(needed) for line in lines):
            return f"it has no {needed[2:-1]} (ICE credentials and a DTLS fingerprint are required)"
    return ""


def _reply(status: int, error: str, message: str, **extra: Any) -> tuple[int, dict[str, Any]]:
    return status, {"error": error, "message": message, **extra}


def _said(key: str, lang: str, **params: Any) -> str:
    return MESSAGES[key]["zh" if lang == "zh" else "en"].format(**params)


@dataclass
class LiveSession:
    id: str
    user: str
    pc: RTCPeerConnection
    conversation: LiveConversation
    lang: str
    started: float = field(default_factory=time.monotonic)
    tasks: list[asyncio.Task] = field(default_factory=list)
    pacer: Pacer | None = None
    channel: Any = None
    pending: list[str] = field(default_factory=list)  # events before the data channel opened
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = ""
    stats: dict[str, Any] = field(default_factory=dict)


class LiveHub:
    """Live sessions over one pipeline (its models in this process)."""

    def __init__(self, pipeline: Any, settings: Any | None = None) -> None:
        self.pipeline = pipeline
        self.settings = settings or pipeline.settings
        self.limits = self.settings.live
        self.options = LiveOptions.from_settings(self.settings)
        self.sessions: dict[str, LiveSession] = {}
        self.finished: list[dict[str, Any]] = []  # the last sessions' end reasons and stats
        self._reserved = 0
        self._opening: set[concurrent.futures.Future] = set()  # offers being answered (close waits)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._teardowns: set[asyncio.Task] = set()  # held: the loop keeps only weak references

    # ------------------------------------------------------------------ the loop
    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=run, name="live-loop", daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def call(self, coro: Any, timeout: float | None = None) -> Any:
        """Run a coroutine on the hub's loop from another thread and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._ensure_loop()).result(timeout)

    # ------------------------------------------------------------------ offers
    def offer(self, request: dict[str, Any], lang: str = "en") -> tuple[int, dict[str, Any]]:
        """Answer a browser's offer: (HTTP status, JSON body). Blocking; thread-safe."""
        sdp, kind, user = request.get("sdp"), request.get("type"), request.get("user")
        if kind != "offer":
            return _reply(400, "bad_offer", 'expected {"type": "offer", "sdp": ..., "user": ...}')
        if not isinstance(sdp, str) or not sdp.strip():
            return _reply(400, "bad_sdp", "the offer has no SDP")
        if problem := sdp_problem(sdp):
            return _reply(400, "bad_sdp", f"malformed SDP offer: {problem}")
        if not isinstance(user, str) or not user:
            return _reply(422, "bad_user", "`user` names whose conversation this is")
        if self._closed:
            return _reply(503, "closed", "live conversations are shutting down")
        with self._lock:
            if len(self.sessions) + self._reserved >= self.limits.max_sessions:
                wait = self._wait_s()
                return _reply(429, "busy", _said("busy", lang, seconds=wait), retry_after_s=wait)
            self._reserved += 1
        abandoned = threading.Event()
        answering = self._open(sdp, user, lang, abandoned)
        opening = asyncio.run_coroutine_threadsafe(answering, self._ensure_loop())
        with self._lock:
            self._opening.add(opening)
        opening.add_done_callback(self._opened)
        try:
            return opening.result(OFFER_TIMEOUT_S)
        except TimeoutError:
            abandoned.set()  # the session, if it is still made, is closed instead of started
            return _reply(504, "timeout", "answering the offer took too long")
        finally:
            with self._lock:
                self._reserved -= 1

    def _opened(self, opening: concurrent.futures.Future) -> None:
        with self._lock:
            self._opening.discard(opening)

    def _wait_s(self) -> int:
        """Seconds until a running session must end at the latest (idle timeout or longest length)."""
        now = time.monotonic()
        limits = self.limits
        ends = [
            min(s.started + limits.max_session_s, s.conversation.last_heard + limits.idle_timeout_s) - now
            for s in self.sessions.values()
        ]
        return max(1, round(min(ends))) if ends else 5

    async def _open(
        self, sdp: str, user: str, lang: str, abandoned: threading.Event
    ) -> tuple[int, dict[str, Any]]:
        servers = [RTCIceServer(url) for url in self.limits.ice_servers]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as e:
            await pc.close()
            return _reply(400, "bad_sdp", f"malformed SDP offer: {e or type(e).__name__}")
        transceivers = {t.kind: t for t in pc.getTransceivers()}
        # the client's microphone: an audio section it sends on (none: video or a data channel only,
        # or audio it only receives, "recvonly"/"inactive": nothing could ever be heard)
        tracks = (t.receiver.track for t in pc.getTransceivers() if t.kind == "audio")
        mic = next((track for track in tracks if track is not None), None)
        if mic is None:
            await pc.close()
            return _reply(400, "no_audio", _said("no_audio", lang))
        session_id = secrets.token_hex(8)
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        conversation = LiveConversation(
            self.pipeline,
            user=user,
            options=self.options,
            lang=lang,
            on_event=lambda event: loop.call_soon_threadsafe(events.put_nowait, event),
        )
        try:
            await asyncio.to_thread(conversation.start)  # prepares the avatar: CPU work
        except Exception as e:
            await pc.close()
            await asyncio.to_thread(conversation.close)
            if isinstance(e, TalkTwinError):
                return _reply(400, e.code, e.user_message(lang))
            log.exception("live session for %s could not start", user)
            return _reply(500, InternalFailure.code, InternalFailure().user_message(lang))
        session = LiveSession(session_id, user, pc, conversation, lang)
        audio_out = QueueTrack("audio")
        video_out = QueueTrack("video") if "video" in transceivers else None
        pc.addTrack(audio_out)
        if video_out is not None:
            pc.addTrack(video_out)
        session.pacer = Pacer(conversation, video_out, audio_out)

        @pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            if channel.label == "events":
                session.channel = channel
                for text in session.pending:
                    channel.send(text)
                session.pending.clear()

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                self._end(session, "hangup" if pc.connectionState == "closed" else "connection_failed")

        try:
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as e:
            await pc.close()
            await asyncio.to_thread(conversation.close)
            return _reply(400, "bad_sdp", f"cannot answer that offer: {e or type(e).__name__}")
        with self._lock:
            late = abandoned.is_set()  # the caller was told 504 and will never connect
            if not late:
                self.sessions[session_id] = session
        if late:
            log.info("live session for %s made after its offer timed out: closed", user)
            await pc.close()
            await asyncio.to_thread(conversation.close)
            return _reply(504, "timeout", "answering the offer took too long")
        session.tasks = [
            asyncio.create_task(session.pacer.run(), name=f"live-pacer-{session_id}"),
            asyncio.create_task(self._listen(session, mic), name=f"live-mic-{session_id}"),
            asyncio.create_task(self._relay(session, events), name=f"live-events-{session_id}"),
            asyncio.create_task(self._watch(session), name=f"live-watch-{session_id}"),
        ]
        log.info("live session %s for %s started", session_id, user)
        local = pc.localDescription
        return 200, {"sdp": local.sdp, "type": local.type, "session": session_id}

    # ------------------------------------------------------------------ a session's tasks
    async def _listen(self, session: LiveSession, mic: Any) -> None:
        """Microphone frames to the conversation, as 16 kHz mono float32."""
        resampler = av.AudioResampler(format="flt", layout="mono", rate=MIC_RATE)
        timeout = FIRST_AUDIO_S
        try:
            while True:
                frame = await asyncio.wait_for(mic.recv(), timeout)
                timeout = STALL_S
                for out in resampler.resample(frame):
                    session.conversation.hear(out.to_ndarray().reshape(-1))
        except TimeoutError:
            self._end(session, "gone")
        except MediaStreamError:
            self._end(session, "hangup")
        except Exception:  # not to leave a session without ears, holding its slot until the idle timeout
            log.exception("live session %s: the microphone's audio could not be read", session.id)
            self._end(session, "mic_failed")

    async def _relay(self, session: LiveSession, events: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            event = await events.get()
            if event.get("interrupted") and session.pacer is not None:
                session.pacer.flush()  # what the encoders have not taken yet goes too
            self._send(session, event)

    def _send(self, session: LiveSession, event: dict[str, Any]) -> None:
        text = json.dumps(event, ensure_ascii=False)
        channel = session.channel
        if channel is not None and channel.readyState == "open":
            channel.send(text)
        elif channel is None and len(session.pending) < 100:
            session.pending.append(text)

    async def _watch(self, session: LiveSession) -> None:
        limits = self.limits
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            if now - session.started > limits.max_session_s:
                reason, seconds = "max_length", limits.max_session_s
            elif (
                now - session.conversation.last_heard > limits.idle_timeout_s
                and not session.conversation.busy
            ):
                reason, seconds = "idle_timeout", limits.idle_timeout_s
            else:
                continue
            message = _said(reason, session.lang, seconds=seconds)
            self._send(session, {"type": "error", "error": reason, "message": message})
            self._end(session, reason, after_s=0.2)  # the event leaves before the connection closes
            return

    # ------------------------------------------------------------------ ending
    def _end(self, session: LiveSession, reason: str, after_s: float = 0) -> None:
        """Start tearing `session` down (on the hub's loop; idempotent: the first reason stands)."""
        if session.reason:
            return
        session.reason = reason
        task = asyncio.get_running_loop().create_task(self._teardown(session, after_s))
        self._teardowns.add(task)
        task.add_done_callback(self._teardowns.discard)

    async def _teardown(self, session: LiveSession, after_s: float) -> None:
        await asyncio.sleep(after_s)
        current = asyncio.current_task()
        for task in session.tasks:
            if task is not current:
                task.cancel()
        for task in session.tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        with contextlib.suppress(Exception):
            await session.pc.close()
        await asyncio.to_thread(session.conversation.close)
        session.stats = {
            "reason": session.reason,
            "seconds": round(time.monotonic() - session.started, 1),
            **(session.pacer.stats() if session.pacer else {}),
            **session.conversation.counts,
        }
        with self._lock:
            self.sessions.pop(session.id, None)
            self.finished = [*self.finished[-19:], {"session": session.id, **session.stats}]
        session.ended.set()
        log.info("live session %s ended (%s): %s", session.id, session.reason, session.stats)

    def hang_up(self, session_id: str, timeout: float = 30) -> None:
        """End one session and wait until it is torn down (blocking)."""

        async def end() -> None:
            session = self.sessions.get(session_id)
            if session is not None:
                self._end(session, "hangup")
                await session.ended.wait()

        self.call(end(), timeout)

    def close(self, timeout: float = 30) -> None:
        """End every session and stop the loop (blocking; idempotent)."""
        self._closed = True
        if self._loop is None:
            return

        with self._lock:
            opening = list(self._opening)
        concurrent.futures.wait(opening, timeout)  # an offer timed out may still be making its session

        async def end_all() -> None:
            sessions = list(self.sessions.values())
            for session in sessions:
                self._end(session, "shutdown")
            await asyncio.gather(*(s.ended.wait() for s in sessions))
            await asyncio.get_running_loop().shutdown_default_executor()  # aiortc's encoder threads

        with contextlib.suppress(Exception):
            self.call(end_all(), timeout)
        loop, thread = self._loop, self._thread
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout)
        with contextlib.suppress(Exception):
            loop.close()
        self._loop = None
