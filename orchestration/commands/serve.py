"""`avatarpipe serve [--host 127.0.0.1] [--port 8080]`: the HTTP API and the web app (service/)."""

from __future__ import annotations

import click


@click.command("serve", help="the HTTP API and web app: upload, follow, view, share, erase")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=int, default=8080, show_default=True, help="port")
def serve(host: str, port: int) -> int:
    import uvicorn

    from service.app import create_app

    uvicorn.run(create_app(), host=host, port=port, log_level="warning", access_log=False)
    return 0
