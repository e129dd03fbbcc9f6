"""A threaded HTTP server on 127.0.0.1 for the tests' fake endpoints and proxies."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def serve_locally(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """``handler`` served on a free port of 127.0.0.1 from a daemon thread (one thread per
    connection); stop it with :func:`stop_serving`."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02},
                     daemon=True).start()
    return httpd


def stop_serving(httpd: ThreadingHTTPServer) -> None:
    httpd.shutdown()
    httpd.server_close()
