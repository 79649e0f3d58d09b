"""The dev server and the OpenAI gateway run on threads of the test process (no process
start, no second TensorFlow import): each returns its URL and a function that stops it."""

import asyncio
import socket
import threading


def serve_saved_models(model_dir, max_batch=32):
    """The dev server's TF Serving REST API over the versions in `model_dir`."""
    from serving.dev_server import ServedModel, make_http_server

    http = make_http_server(ServedModel(model_dir, max_batch), "127.0.0.1", 0)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{http.server_address[1]}", http.shutdown


def serve_gateway(upstream, model, **options):
    """`tfllm gateway --tf-serving UPSTREAM --model MODEL` on its own event loop."""
    from aiohttp import web

    from serving.gateway import Gateway, make_app

    loop = asyncio.new_event_loop()
    started, box = threading.Event(), {}

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def start():
        runner = web.AppRunner(make_app(Gateway(upstream, model, **options)))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        box["runner"] = runner

    def run():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        started.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    assert started.wait(60)

    def stop():
        asyncio.run_coroutine_threadsafe(box["runner"].cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)

    return f"http://127.0.0.1:{port}", stop
