"""The HTTP side of ``serve``: a stdlib threading server, its request handler and the command."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from debate_lightning.models.base import Generator
from debate_lightning.serve.api import APIError, completion_body, parse_completion_request
from debate_lightning.serve.batcher import Batcher, local

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 2**20


class ServeServer(ThreadingHTTPServer):
    """The server: one handler thread per connection, every one of them joined by ``close()``.

    Handler threads of idle keep-alive connections wait on their sockets; left running past
    ``close()`` they kept the model alive into interpreter shutdown, where freeing it aborted
    the process (SIGABRT). ``close()`` therefore shuts every open connection's socket (its
    handler's read returns at once) and joins every handler thread before dropping the model.
    """

    daemon_threads = False
    block_on_close = True  # server_close() joins the handler threads

    def __init__(self, address: tuple[str, int], generator: Generator, model_name: str, batcher: Batcher, request_timeout: float):
        self.generator, self.model_name, self.batcher, self.request_timeout = generator, model_name, batcher, request_timeout
        self.created = int(time.time())
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> ServeServer:
        """Serve from a background thread (tests, notebooks); ``close()`` stops and joins it."""
        self._serving = threading.Thread(target=self.serve_forever, name="serve-http", daemon=True)
        self._serving.start()
        return self

    def process_request(self, request, client_address) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close(self) -> None:
        self.shutdown()
        with self._connections_lock:
            open_connections = list(self._connections)
        for conn in open_connections:  # wake handlers waiting on idle keep-alive connections
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.server_close()  # joins every handler thread (block_on_close)
        self.batcher.close()
        serving = getattr(self, "_serving", None)
        if serving is not None:
            serving.join(timeout=30)
        self.generator = self.batcher.generator = None


class Handler(BaseHTTPRequestHandler):
    server: ServeServer
    protocol_version = "HTTP/1.1"
    server_version = "debate_lightning-serve"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the access log goes to debug
        log.debug("%s - %s", self.address_string(), format % args)

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        try:
            self._write(status, data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout); nothing to answer
            self.close_connection = True
            log.debug("client %s hung up before its %d answer", self.address_string(), status)

    def _write(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 405:
            self.send_header("Allow", "POST" if self.path.rstrip("/").endswith("/chat/completions") else "GET")
        self.end_headers()
        self.wfile.write(data)

    def _error(self, err: APIError) -> None:
        self.server.batcher.count_http_error(err.status)
        self._send(err.status, err.body())

    def _route(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    def _model_card(self) -> dict:
        return {"id": self.server.model_name, "object": "model", "created": self.server.created, "owned_by": "debate_lightning"}

    def do_GET(self) -> None:
        route = self._route()
        try:
            if route == "/v1/models":
                self._send(200, {"object": "list", "data": [self._model_card()]})
            elif route.startswith("/v1/models/"):
                if route[len("/v1/models/") :] != self.server.model_name:
                    raise APIError(404, f"the model {route[len('/v1/models/'):]!r} does not exist", param="model", code="model_not_found")
                self._send(200, self._model_card())
            elif route in ("/health", "/v1/stats"):
                self._send(200, {"status": "ok", "model": self.server.model_name, **self.server.batcher.snapshot()})
            elif route == "/v1/chat/completions":
                raise APIError(405, "use POST for /v1/chat/completions", code="method_not_allowed")
            else:
                raise APIError(404, f"unknown route GET {route}", code="not_found")
        except APIError as err:
            self._error(err)

    def do_POST(self) -> None:
        route = self._route()
        try:
            body = self._read_json()  # always drain the body so a keep-alive connection stays in sync
            if route != "/v1/chat/completions":
                if route in ("/v1/models", "/health", "/v1/stats") or route.startswith("/v1/models/"):
                    raise APIError(405, f"use GET for {route}", code="method_not_allowed")
                raise APIError(404, f"unknown route POST {route}", code="not_found")
            req = parse_completion_request(body, self.server.model_name)
            if self.server.generator is None:
                raise APIError(503, "server is shutting down", type_="server_error")
            if req.logprobs:
                local(self.server.generator)  # 400 before queueing if this model cannot give log-probs
            try:
                results = self.server.batcher.submit(req).result(timeout=self.server.request_timeout)
            except TimeoutError:
                raise APIError(504, f"generation took longer than {self.server.request_timeout}s", type_="server_error") from None
            self._send(200, completion_body(req, results, self.server.model_name))
        except APIError as err:
            self._error(err)
        except Exception as exc:  # noqa: BLE001 - a bug must still answer in the API's shape
            log.exception("unexpected error on %s", route)
            self._error(APIError(500, f"internal error: {type(exc).__name__}: {exc}", type_="server_error"))

    def do_PUT(self) -> None:
        self._not_allowed()

    def do_DELETE(self) -> None:
        self._not_allowed()

    def do_PATCH(self) -> None:
        self._not_allowed()

    def _not_allowed(self) -> None:
        try:
            self._read_body()
        except APIError:
            pass
        self._error(APIError(405, f"method {self.command} is not allowed on {self._route()}", code="method_not_allowed"))

    def _read_body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise APIError(400, "invalid Content-Length header") from None
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise APIError(413, f"request body over {MAX_BODY_BYTES} bytes", code="request_too_large")
        return self.rfile.read(length) if length > 0 else b""

    def _read_json(self) -> Any:
        raw = self._read_body()
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise APIError(400, f"could not parse the JSON body: {e}", code="invalid_json") from None


def make_server(
    generator: Generator,
    host: str = "127.0.0.1",
    port: int = 0,
    model_name: str | None = None,
    max_batch_size: int = 32,
    batch_window: float = 0.01,
    request_timeout: float = 600.0,
) -> ServeServer:
    """A ready (not yet serving) server; ``port=0`` picks a free port, see ``server.url``.

    Run it with ``server.serve_forever()``, or ``server.start()`` for a background thread, and stop
    it with ``server.close()``.
    """
    batcher = Batcher(generator, max_batch_size=max_batch_size, window=batch_window)
    try:
        return ServeServer((host, port), generator, model_name or generator.name, batcher, request_timeout)
    except OSError:
        batcher.close()
        raise


def serve_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m debate_lightning serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="'embedded', a model directory, a hub id or a .gguf file")
    parser.add_argument("--name", default=None, help="the model id clients use (default: the directory name)")
    parser.add_argument("--adapter", default=None, help="a PEFT adapter directory to load on top")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback; 0.0.0.0 exposes it to the network)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-batch-size", type=int, default=32, help="most sequences per generate call")
    parser.add_argument("--batch-window-ms", type=float, default=10.0, help="how long to gather concurrent requests")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from debate_lightning.models.registry import ModelSpec, build_generator

    name = args.name or (args.model.rstrip("/").split("/")[-1] if args.model != "embedded" else "smollm2-135m")
    spec = ModelSpec(backend="hf", path=args.model, dtype=args.dtype, device=args.device, adapter=args.adapter, max_batch_size=args.max_batch_size)
    try:
        generator = build_generator(spec, name)
        server = make_server(generator, args.host, args.port, name, args.max_batch_size, args.batch_window_ms / 1000.0)
    except (OSError, ValueError) as e:
        print(f"serve: {e}", flush=True)
        return 1
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this address can use the model (there is no authentication)", args.host)
    print(f"serving {name!r} at {server.url}  (Ctrl-C or SIGTERM to stop)", flush=True)
    # SIGTERM (kill, Slurm, container stop) stops as Ctrl-C does; background jobs of a script may
    # not get SIGINT at all (the shell ignores it for them).
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.close()  # serve_forever has returned, so its shutdown() does not wait
        print("serve: stopped", flush=True)
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
