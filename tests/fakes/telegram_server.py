"""A fake Telegram Bot API server on 127.0.0.1 for driving the real python-telegram-bot.

Routes: `POST /bot{token}/{method}` and `GET /file/bot{token}/{path}`. It keeps an update queue
(getUpdates honours offsets and long-polls briefly), serves files, records every call with its
parameters and uploads, and enforces what Telegram enforces but PTB does not (video notes must be
square mp4s of at most 60 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.local_server import LocalServer

BOT_ID = 7000001
BOT_USERNAME = "talktwin_test_bot"
TOKEN = "123456:TEST-TOKEN"


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)


class FakeBotApi(LocalServer):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Call] = []
        self.updates: list[dict] = []
        self.files: dict[str, bytes] = {}
        self.webhook: dict[str, Any] | None = None
        self._confirmed = 0
        self._ids = itertools.count(1)
        self._cond = threading.Condition()

    # ------------------------------------------------------------------ lifecycle
    def routes(self, app: web.Application) -> None:
        app.router.add_post("/bot{token}/{method}", self._method)
        app.router.add_get("/file/bot{token}/{path:.*}", self._file)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def file_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/file/bot"

    # ------------------------------------------------------------------ test side
    def add_file(self, data: bytes) -> str:
        file_id = f"file{next(self._ids)}"
        self.files[file_id] = data
        return file_id

    def push(self, update: dict) -> int:
        with self._cond:
            update = {"update_id": 1000 + len(self.updates), **update}
            self.updates.append(update)
            self._cond.notify_all()
            return update["update_id"]

    def wait_for(
        self, method: str, count: int = 1, timeout: float = 120, chat_id: int | None = None
    ) -> list[Call]:
        """Block until `count` calls of `method` (to `chat_id`, if given) were made; return them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = self.find(method, chat_id)
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [c.method for c in self.calls]
                    raise TimeoutError(f"expected {count} x {method} (chat {chat_id}); calls so far: {seen}")
                self._cond.wait(left)

    def wait_texts(self, chat_id: int, expected: list[str], timeout: float = 120) -> list[str]:
        """Block until every expected text (a prefix is enough) was sent to `chat_id`; return all texts."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                texts = self.texts(chat_id)
                missing = [e for e in expected if not any(t.startswith(e) for t in texts)]
                if not missing:
                    return texts
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"never sent to {chat_id}: {missing}; sent: {texts}")
                self._cond.wait(left)

    def find(self, method: str, chat_id: int | None = None) -> list[Call]:
        return [
            c
            for c in self.calls
            if c.method == method and (chat_id is None or str(c.params.get("chat_id")) == str(chat_id))
        ]

    def texts(self, chat_id: int) -> list[str]:
        return [c.params.get("text", "") for c in self.find("sendMessage", chat_id)]

    # ------------------------------------------------------------------ server side
    async def _file(self, request: web.Request) -> web.StreamResponse:
        file_id = request.match_info["path"].rsplit("/", 1)[-1]
        if file_id not in self.files:
            return web.Response(status=404)
        return web.Response(body=self.files[file_id])

    async def _method(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != TOKEN:
            return _error(401, "Unauthorized")
        method = request.match_info["method"]
        params, files = await _read_params(request)
        call = Call(method, params, files)
        if method != "getUpdates":
            with self._cond:
                self.calls.append(call)
                self._cond.notify_all()
        handler = getattr(self, f"_m_{method}", None)
        if handler is None:
            return _ok(True)
        return await handler(call)

    async def _m_getMe(self, call: Call) -> web.Response:
        return _ok(_bot_user())

    async def _m_getUpdates(self, call: Call) -> web.Response:
        # like Telegram: an offset confirms every earlier update, which is then gone for good
        self._confirmed = max(self._confirmed, int(call.params.get("offset") or 0))
        offset = self._confirmed
        timeout = min(float(call.params.get("timeout") or 0), 0.5)  # short, so PTB stops quickly
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                pending = [u for u in self.updates if u["update_id"] >= offset]
            if pending or time.monotonic() >= deadline:
                return _ok(pending)
            await asyncio.sleep(0.05)

    async def _m_setWebhook(self, call: Call) -> web.Response:
        self.webhook = call.params
        return _ok(True)

    async def _m_getFile(self, call: Call) -> web.Response:
        file_id = call.params["file_id"]
        if file_id not in self.files:
            return _error(400, "Bad Request: invalid file_id")
        return _ok(
            {
                "file_id": file_id,
                "file_unique_id": f"u{file_id}",
                "file_size": len(self.files[file_id]),
                "file_path": f"documents/{file_id}",
            }
        )

    async def _m_sendMessage(self, call: Call) -> web.Response:
        return _ok(self._message(call, text=call.params.get("text", "")))

    async def _m_editMessageText(self, call: Call) -> web.Response:
        return _ok(self._message(call, text=call.params.get("text", "")))

    async def _m_sendVideoNote(self, call: Call) -> web.Response:
        data = call.files.get("video_note", b"")
        problem = _video_note_problem(data)
        if problem:
            return _error(400, f"Bad Request: {problem}")
        info = _probe(data)
        note = {
            "file_id": self.add_file(data),
            "file_unique_id": "vn",
            "length": info["width"],
            "duration": round(info["duration"]),
        }
        return _ok(self._message(call, video_note=note))

    async def _m_sendVideo(self, call: Call) -> web.Response:
        data = call.files.get("video", b"")
        info = _probe(data)
        video = {
            "file_id": self.add_file(data),
            "file_unique_id": "v",
            "width": info["width"],
            "height": info["height"],
            "duration": round(info["duration"]),
        }
        return _ok(self._message(call, video=video, caption=call.params.get("caption")))

    async def _m_sendVoice(self, call: Call) -> web.Response:
        data = call.files.get("voice", b"")
        voice = {"file_id": self.add_file(data), "file_unique_id": "vo", "duration": 1}
        return _ok(self._message(call, voice=voice, caption=call.params.get("caption")))

    async def _m_sendPhoto(self, call: Call) -> web.Response:
        photo = [
            {
                "file_id": self.add_file(call.files.get("photo", b"")),
                "file_unique_id": "p",
                "width": 1,
                "height": 1,
            }
        ]
        return _ok(self._message(call, photo=photo))

    def _message(self, call: Call, **content: Any) -> dict:
        chat_id = int(call.params.get("chat_id", 0))
        return {
            "message_id": next(self._ids),
            "date": int(time.time()),
            "from": _bot_user(),
            "chat": {"id": chat_id, "type": "private" if chat_id > 0 else "group"},
            **{k: v for k, v in content.items() if v is not None},
        }


async def _read_params(request: web.Request) -> tuple[dict[str, Any], dict[str, bytes]]:
    """PTB sends form fields (complex values JSON-encoded) or multipart with the uploads as parts."""
    params: dict[str, Any] = {}
    files: dict[str, bytes] = {}
    ctype = request.content_type
    if ctype == "multipart/form-data":
        reader = await request.multipart()
        async for part in reader:
            if part.filename:
                files[part.name] = bytes(await part.read())
            else:
                params[part.name] = await part.text()
    elif ctype == "application/json":
        params = await request.json()
    else:
        params = dict(await request.post())
    for key, value in list(params.items()):
        if isinstance(value, str) and value[:1] in "[{":
            with contextlib.suppress(ValueError):
                params[key] = json.loads(value)
    return params, files


def _ok(result: Any) -> web.Response:
    return web.Response(text=json.dumps({"ok": True, "result": result}), content_type="application/json")


def _error(status: int, description: str) -> web.Response:
    body = {"ok": False, "error_code": status, "description": description}
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


def _bot_user() -> dict:
    return {
        "id": BOT_ID,
        "is_bot": True,
        "first_name": "Twin",
        "username": BOT_USERNAME,
        "can_join_groups": True,
        "can_read_all_group_messages": False,
        "supports_inline_queries": False,
    }


def _probe(data: bytes) -> dict:
    import io

    import av

    with av.open(io.BytesIO(data)) as box:
        v = box.streams.video[0].codec_context
        return {
            "width": v.width,
            "height": v.height,
            "duration": box.duration / 1e6,
            "audio": bool(box.streams.audio),
            "format": box.format.name,
        }


def _video_note_problem(data: bytes) -> str:
    try:
        info = _probe(data)
    except Exception as e:  # not a video at all
        return f"video note is not a video ({e})"
    if "mp4" not in info["format"]:
        return "video note must be an mp4"
    if info["width"] != info["height"]:
        return "video note must be square"
    if info["duration"] > 60:
        return "video note is longer than 60 s"
    return ""


# ---------------------------------------------------------------------- update builders
_message_ids = itertools.count(1)


def user(uid: int, lang: str = "en", name: str = "Ann") -> dict:
    return {"id": uid, "is_bot": False, "first_name": name, "language_code": lang}


def message_update(sender: dict, chat: dict | None = None, **content: Any) -> dict:
    """An update carrying a message from `sender` in `chat` (their private chat by default)."""
    chat = chat or {"id": sender["id"], "type": "private", "first_name": sender["first_name"]}
    return {
        "message": {
            "message_id": next(_message_ids),
            "date": int(time.time()),
            "chat": chat,
            "from": sender,
            **content,
        }
    }


def command(text: str) -> dict:
    name = text.split()[0]
    return {"text": text, "entities": [{"type": "bot_command", "offset": 0, "length": len(name)}]}


def callback_update(sender: dict, data: str) -> dict:
    msg = {
        "message_id": next(_message_ids),
        "date": int(time.time()),
        "from": _bot_user(),
        "chat": {"id": sender["id"], "type": "private"},
        "text": "?",
    }
    return {
        "callback_query": {
            "id": str(next(_message_ids)),
            "from": sender,
            "chat_instance": "ci",
            "data": data,
            "message": msg,
        }
    }
