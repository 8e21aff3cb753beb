"""An S3 server (moto) that logs every request it receives with its arrival time, for write-rate tests.

``python moto_timed.py PORT LOG``: serves moto's S3 on 127.0.0.1:PORT and appends one line per
request to LOG: ``<unix time> <METHOD> <path>?<query> <copy source or ->``. The time is taken by
the server as the request arrives (werkzeug's own access log has one-second resolution).
"""

from __future__ import annotations

import sys
import threading
import time

from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server


def main(port: int, log_path: str) -> None:
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()
    log = open(log_path, "a", buffering=1, encoding="utf-8")

    def timed(environ, start_response):
        line = (f"{time.time():.6f} {environ['REQUEST_METHOD']} {environ.get('PATH_INFO', '')}"
                f"?{environ.get('QUERY_STRING', '')} {environ.get('HTTP_X_AMZ_COPY_SOURCE', '-')}\n")
        with lock:
            log.write(line)
        return app(environ, start_response)

    server = make_server("127.0.0.1", port, timed, threaded=True, request_handler=MotoRequestHandler)
    server.serve_forever()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
